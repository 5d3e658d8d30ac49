"""`instaseg demo` end to end in a temporary folder: files written, numbers sane."""

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
    expected = {"ground_truth.json", "results.json", "report.json"}
    # Nothing else, and no temporary files left behind.
    assert names == expected | {"report_pr_segm.png", "report_pr_boundary.png"}

    gt = json.loads((out / "ground_truth.json").read_text())
    results = json.loads((out / "results.json").read_text())
    assert len(gt["images"]) == 3 and 50 <= len(gt["annotations"]) <= 120
    assert {r["image_id"] for r in results} == {image["id"] for image in gt["images"]}
    report = json.loads((out / "report.json").read_text())
    assert report["max_dets"] == 500
    stats = report["coco"]["segm"]["stats"]
    # The untrained watershed baseline on three real images: clearly better than nothing, clearly imperfect.
    assert 0.1 < stats["AP"] < 0.6 and 0.3 < stats["AP50"] < 0.9
    assert 0.1 < report["pixel_metrics"]["dsb_score"] < 0.8
    with Image.open(out / "report_pr_segm.png") as png:
        assert png.format == "PNG"

    # Running again over the same folder replaces the files with the same content (deterministic).
    assert main(["demo", "--out", str(out)]) == 0
    assert json.loads((out / "results.json").read_text()) == results
