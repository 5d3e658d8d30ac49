"""`instaseg convert` end to end through the CLI entry point: exit codes, output file, printed summary."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from instaseg.cli.main import main


@pytest.fixture()
def mask_folders(tmp_path: Path) -> Path:
    root = tmp_path / "stage1_train"
    for name, masks in (("s1", 2), ("s2", 1)):
        (root / name / "images").mkdir(parents=True)
        (root / name / "masks").mkdir()
        Image.fromarray(np.full((10, 10, 3), 90, np.uint8)).save(root / name / "images" / f"{name}.png")
        for k in range(masks):
            mask = np.zeros((10, 10), np.uint8)
            mask[k * 4 : k * 4 + 3, 1:5] = 255
            Image.fromarray(mask).save(root / name / "masks" / f"m{k}.png")
    return root


def test_convert_writes_coco_and_prints_a_summary(
    mask_folders: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out" / "nuclei.json"
    argv = ["convert", "--from", "mask-folders", str(mask_folders), "--to", "coco", str(out)]
    assert main([*argv, "--category-name", "nucleus", "--workers", "2"]) == 0
    written = json.loads(out.read_text())
    assert (len(written["images"]), len(written["annotations"])) == (2, 3)
    assert written["categories"][0]["name"] == "nucleus"
    printed = capsys.readouterr().out
    assert "images: 2" in printed and "instances: 3" in printed and "  nucleus: 3" in printed
    assert "skipped: 0" in printed


def test_skips_are_printed_and_strict_fails(mask_folders: Path, tmp_path: Path, capsys) -> None:
    bad_mask = mask_folders / "s2" / "masks" / "grey.png"
    Image.fromarray(np.arange(100, dtype=np.uint8).reshape(10, 10)).save(bad_mask)
    out = tmp_path / "out.json"
    argv = ["convert", "--from", "mask-folders", str(mask_folders), "--to", "coco", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "skipped: 1" in printed and f"{bad_mask}: image 's2', mask 'grey': non-binary mask" in printed
    out.unlink()
    assert main([*argv, "--strict"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and f"{bad_mask}: image 's2', mask 'grey': non-binary mask" in error
    assert not out.exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--from", "mask-folders", "MISSING"], "no such folder"),
        (["--from", "yolo", "SRC", "--category-name", "x"], "do not apply to the yolo format"),
        (["--from", "coco", "MISSING.json"], "no such file"),
    ],
)
def test_user_errors_exit_2(
    mask_folders: Path, tmp_path: Path, capsys, extra: list[str], message: str
) -> None:
    extra = [str(tmp_path / "missing") if a == "MISSING" else a for a in extra]
    extra = [str(tmp_path / "missing.json") if a == "MISSING.json" else a for a in extra]
    extra = [str(mask_folders) if a == "SRC" else a for a in extra]
    assert main(["convert", *extra, "--to", "coco", str(tmp_path / "out.json")]) == 2
    assert message in capsys.readouterr().err


def test_only_coco_is_a_target(mask_folders: Path, tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as info:
        main(["convert", "--from", "mask-folders", str(mask_folders), "--to", "voc", str(tmp_path / "x")])
    assert info.value.code == 2


def test_semantic_label_maps_convert_with_category_names(tmp_path: Path, capsys) -> None:
    root = tmp_path / "scenes"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    Image.fromarray(np.full((6, 8, 3), 90, np.uint8)).save(root / "images" / "s.png")
    class_map = np.full((6, 8), 255, np.uint8)
    class_map[:2] = 1
    class_map[2:, :3] = 2
    Image.fromarray(class_map).save(root / "labels" / "s.png")
    out = tmp_path / "scenes.json"
    argv = ["convert", "--from", "semantic-label-maps", str(root), "--to", "coco", str(out)]
    assert main([*argv, "--category-name", "sky,road", "--ignore-index", "255"]) == 0
    written = json.loads(out.read_text())
    assert [(c["name"], c["isthing"]) for c in written["categories"]] == [("sky", 0), ("road", 0)]
    assert [(a["category_id"], a["area"], a["iscrowd"]) for a in written["annotations"]] == [
        (1, 16, 0),
        (2, 12, 0),
    ]
    assert "sky: 1" in capsys.readouterr().out
    # Without --ignore-index, 0 is void and 255 is a class without a category: the file is named.
    assert main([*argv, "--category-name", "sky,road", "--strict"]) == 2
    error = capsys.readouterr().err
    assert str(root / "labels" / "s.png") in error and "value(s) 255 with no category" in error
    assert main([*argv, "--category-name", "sky", "--workers", "2"]) == 2
    assert "workers do not apply to the semantic-label-maps format" in capsys.readouterr().err
