"""`instaseg split` end to end through the CLI entry point: exit codes, output files, printed summary."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from instaseg.cli.main import main


@pytest.fixture()
def gt(tmp_path: Path) -> Path:
    images = [{"id": i, "file_name": f"{i}.png", "height": 8, "width": 8} for i in range(1, 21)]
    annotations = [
        {"id": i, "image_id": i, "category_id": 1, "segmentation": [[1.0, 1.0, 5.0, 1.0, 5.0, 5.0]]}
        for i in range(1, 21)
    ]
    path = tmp_path / "gt.json"
    path.write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "c"}]})
    )
    return path


def _split(gt: Path, out: Path, *extra: str) -> int:
    return main(
        ["split", str(gt), "--out-train", str(out / "train.json"), "--out-val", str(out / "val.json"), *extra]
    )


def test_split_writes_both_parts(gt: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _split(gt, tmp_path / "a", "--val-fraction", "0.25", "--seed", "3") == 0
    train = json.loads((tmp_path / "a" / "train.json").read_text())
    val = json.loads((tmp_path / "a" / "val.json").read_text())
    assert (len(train["images"]), len(val["images"])) == (15, 5)
    assert {a["image_id"] for a in val["annotations"]} == {i["id"] for i in val["images"]}
    assert val["images"][0]["file_name"].startswith("../")  # still points at the images beside gt.json
    printed = capsys.readouterr().out
    assert "train: 15 images, 15 instances" in printed and "val: 5 images, 5 instances" in printed
    assert _split(gt, tmp_path / "b", "--val-fraction", "0.25", "--seed", "3") == 0
    assert (tmp_path / "b" / "val.json").read_bytes() == (tmp_path / "a" / "val.json").read_bytes()


def test_split_user_errors_exit_2(gt: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _split(gt, tmp_path, "--val-fraction", "1.5") == 2
    assert "val_fraction must be between 0 and 1" in capsys.readouterr().err
    assert _split(tmp_path / "missing.json", tmp_path) == 2
    assert "no such file" in capsys.readouterr().err
    assert not (tmp_path / "train.json").exists()


def test_an_unwritable_val_folder_leaves_the_old_train_file_alone(
    gt: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "train.json").write_text("old")
    (tmp_path / "out" / "blocker").write_text("a file where the val folder should be")
    args = ["split", str(gt), "--out-train", str(tmp_path / "out" / "train.json")]
    assert main([*args, "--out-val", str(tmp_path / "out" / "blocker" / "val.json")]) == 2
    error = capsys.readouterr().err
    assert error.startswith("instaseg split: error: ") and "blocker: File exists" in error
    assert (tmp_path / "out" / "train.json").read_text() == "old"  # not half of a new pair
