"""`instaseg demo` end to end in a temporary folder: files written, numbers sane, model beats baseline."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from instaseg.cli.main import main


def test_demo_runs_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "demo"  # does not exist yet: the demo creates it
    assert main(["demo", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "mask AP" in printed and "DSB score" in printed and str(out / "report.json") in printed

    names = {p.name for p in out.iterdir()}
    expected = {"ground_truth.json", "results.json", "images.json", "report.json", "overlays"}
    # Nothing else, and no temporary files left behind.
    assert names == expected | {"report_pr_segm.png", "report_pr_boundary.png"}
    assert len(list((out / "overlays").glob("*.png"))) == 3

    gt = json.loads((out / "ground_truth.json").read_text())
    results = json.loads((out / "results.json").read_text())
    assert len(gt["images"]) == 3 and len(gt["annotations"]) == 124
    assert {r["image_id"] for r in results} == {image["id"] for image in gt["images"]}
    report = json.loads((out / "report.json").read_text())
    assert report["max_dets"] == 500
    stats = report["coco"]["segm"]["stats"]
    baseline_ap = _number_after(printed, "watershed baseline on the same images: mask AP ")
    baseline_dsb = _number_after(printed, f"mask AP {baseline_ap:.3f}  DSB score ")
    # The bundled model on images held out from its training (mask AP 0.51, DSB 0.46 when written): useful,
    # and clearly better than the classical baseline (0.39, 0.37) on both measures.
    assert stats["AP"] > 0.45 and stats["AP50"] > 0.75
    assert stats["AP"] > baseline_ap + 0.05
    assert report["pixel_metrics"]["dsb_score"] > baseline_dsb
    with Image.open(out / "report_pr_segm.png") as png:
        assert png.format == "PNG"

    # Running again over the same folder replaces the files with the same content (deterministic).
    assert main(["demo", "--out", str(out)]) == 0
    assert json.loads((out / "results.json").read_text()) == results


def _number_after(text: str, prefix: str) -> float:
    """The number printed right after `prefix` in `text`."""
    start = text.index(prefix) + len(prefix)
    return float(text[start:].split()[0])
