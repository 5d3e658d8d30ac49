"""`instaseg rank`: the command's choices match the library's, and a run writes every output."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from instaseg.active.ranking import Method
from instaseg.cli import rank
from instaseg.cli.main import main
from instaseg.data.synthetic import make_synthetic_dataset


def test_the_command_lists_the_library_methods() -> None:
    assert tuple(method.value for method in Method) == rank.METHODS


@pytest.mark.slow
def test_rank_writes_the_ranking_sheet_and_pre_annotations(
    tiny_model_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make_synthetic_dataset(tmp_path / "pool", 5)
    out = tmp_path / "out"
    code = main(
        ["rank", str(tmp_path / "pool" / "images"), "--model", str(tiny_model_checkpoint)]
        + ["--method", "mean-uncertainty", "--budget", "2", "--out", str(out), "--no-progress"]
    )
    assert code == 0
    ranking = json.loads((out / "ranking.json").read_text())
    assert [image["selected"] for image in ranking["images"]] == [True, True, False, False, False]
    for name in (
        "ranking.csv",
        "contact_sheet.png",
        "cvat/instances_default.json",
        "label_studio/tasks.json",
    ):
        assert (out / name).is_file(), name
    assert len(json.loads((out / "label_studio" / "tasks.json").read_text())) == 2
    assert "selected 2" in capsys.readouterr().out


def test_rank_reports_a_budget_larger_than_the_pool(
    tiny_model_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make_synthetic_dataset(tmp_path / "pool", 2)
    code = main(
        ["rank", str(tmp_path / "pool" / "images"), "--model", str(tiny_model_checkpoint)]
        + ["--method", "random", "--budget", "3", "--out", str(tmp_path / "out")]
    )
    assert code == 2
    assert "budget 3 is larger than the pool of 2 readable image(s)" in capsys.readouterr().err
