"""benchmarks/bench_active_learning.py: area under the curve, summary over seeds, resuming a run."""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_active_learning.py"


@pytest.fixture(scope="module")
def bench():  # noqa: ANN201 (a module loaded from its path)
    spec = importlib.util.spec_from_file_location("bench_active_learning", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_area_under_curve_is_the_mean_over_the_interval(bench) -> None:  # noqa: ANN001
    x = np.array([0.0, 1.0, 2.0])
    assert bench.area_under_curve(x, np.array([0.3, 0.3, 0.3]), 0.0, 2.0) == pytest.approx(0.3)
    assert bench.area_under_curve(x, np.array([0.0, 1.0, 2.0]), 0.0, 2.0) == pytest.approx(1.0)
    assert bench.area_under_curve(x, np.array([0.0, 1.0, 2.0]), 1.0, 2.0) == pytest.approx(1.5)


def _row(method: str, seed: int, round_index: int, images: int, objects: int, ap: float) -> dict:
    return {
        "method": method,
        "seed": seed,
        "round": round_index,
        "images": images,
        "image_fraction": images / 10,
        "objects": objects,
        "segm_AP": ap,
    }


def test_summary_compares_methods_on_the_shared_object_range(bench) -> None:  # noqa: ANN001
    rows = [
        _row("random", 0, 0, 1, 10, 0.1),
        _row("random", 0, 1, 2, 20, 0.3),
        _row("random", 1, 0, 1, 12, 0.2),
        _row("random", 1, 1, 2, 22, 0.4),
        _row("coreset", 0, 0, 1, 10, 0.1),
        _row("coreset", 0, 1, 2, 40, 0.5),
    ]
    summary = bench.summarise(rows)
    assert summary["auc_ranges"] == {"image_fraction": [0.1, 0.2], "objects": [12, 20]}
    random = summary["random"]
    assert random["seeds"] == 2
    assert random["rounds"][1]["segm_AP_mean"] == pytest.approx(0.35)
    assert random["rounds"][1]["segm_AP_std"] == pytest.approx(0.05)
    assert random["auc_images_mean"] == pytest.approx(0.25)
    # Over objects 12..20: seed 0 runs 0.14 -> 0.3 (mean 0.22), seed 1 runs 0.2 -> 0.36 (mean 0.28).
    assert random["auc_objects_mean"] == pytest.approx(0.25)
    assert random["auc_objects_std"] == pytest.approx(0.03)
    # coreset pays 40 objects for its second round: on objects 12..20 it is only 0.113..0.167 along.
    assert summary["coreset"]["auc_objects_mean"] == pytest.approx(
        (0.1 + 0.4 * 2 / 30 + 0.1 + 0.4 * 10 / 30) / 2
    )


@pytest.mark.slow
def test_two_rounds_of_two_methods_on_synthetic_data(bench, tmp_path: Path) -> None:  # noqa: ANN001
    pool_json, val_json = bench.smoke_data(tmp_path)
    pool = bench.read_coco(pool_json, strict=True)
    args = _simulation_args(bench, tmp_path, val_json, rounds=2)
    args.override = [*bench.SMOKE_OVERRIDES, "schedule.iterations=2"]
    simulation = bench.Simulation(args, pool, tmp_path / "rounds.jsonl", [])
    simulation.run_seed(0, [bench.Method.RANDOM, bench.Method.CORESET])
    rows = simulation.rows()
    assert sorted((row["method"], row["round"], row["images"]) for row in rows) == [
        ("coreset", 0, 3),
        ("coreset", 1, 6),
        ("random", 0, 3),
        ("random", 1, 6),
    ]
    for row in rows:
        assert 0.0 <= row["segm_AP"] <= 1.0
        if row["round"] == 0:
            assert len(row["selected_ids"]) == 3 and not set(row["selected_ids"]) & set(row["labelled_ids"])
        else:
            assert row["selected_ids"] == []  # the last round selects nothing
    assert len((tmp_path / "rounds.jsonl").read_text().splitlines()) == 4


def _simulation_args(bench, tmp_path: Path, val_json: Path, rounds: int) -> argparse.Namespace:  # noqa: ANN001
    return argparse.Namespace(
        out=tmp_path,
        work=tmp_path / "runs",
        config=bench.SMOKE_CONFIG,
        val=val_json,
        initial_fraction=0.25,
        step_fraction=0.25,
        rounds=rounds,
        rank_device="cpu",
        override=[],
    )


def _fake_rounds(bench, monkeypatch: pytest.MonkeyPatch) -> list[Path]:  # noqa: ANN001
    """Training that records its run folder and returns AP 0.1 x runs so far; ranking that takes the
    candidates in order (so every run's selection is known)."""
    trained: list[Path] = []

    def fake_train(config, overwrite: bool, progress: bool):  # noqa: ANN001, ANN202 (the trainer's signature)
        run = Path(config.output_dir)
        run.mkdir(parents=True, exist_ok=True)
        (run / "last.pt").write_bytes(b"checkpoint")
        trained.append(run)
        return argparse.Namespace(last_eval={"segm_AP": 0.1 * len(trained)})

    def fake_rank(paths, model, method, budget, options, labelled, progress):  # noqa: ANN001, ANN202
        return argparse.Namespace(selected=[argparse.Namespace(path=path) for path in paths[:budget]])

    monkeypatch.setattr(bench, "train", fake_train)
    monkeypatch.setattr(bench, "rank_images", fake_rank)
    monkeypatch.setattr(bench, "load_model", lambda path: None)
    return trained


def test_rounds_run_side_by_side_and_resume_from_the_log_on_another_machine(
    bench, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:  # noqa: ANN001
    pool_json, val_json = bench.smoke_data(tmp_path / "data")
    pool = bench.read_coco(pool_json, strict=True)
    methods = [bench.Method.RANDOM, bench.Method.CORESET]
    trained = _fake_rounds(bench, monkeypatch)
    log = tmp_path / "rounds.jsonl"
    whole = bench.Simulation(_simulation_args(bench, tmp_path, val_json, rounds=3), pool, log, [])
    whole.run_seed(0, methods)
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    # Round 0 is one model for both methods; then every method's round 1 before any round 2.
    assert [(row["method"], row["round"]) for row in lines] == [
        ("random", 0),
        ("coreset", 0),
        ("random", 1),
        ("coreset", 1),
        ("random", 2),
        ("coreset", 2),
    ]
    assert len(trained) == 5 and lines[0]["segm_AP"] == lines[1]["segm_AP"]
    for before, after in zip(lines[:4], lines[2:], strict=True):
        assert after["labelled_ids"] == sorted(set(before["labelled_ids"]) | set(before["selected_ids"]))
    # Stopped after random's round 1, continued on a machine without the first one's runs (new --work):
    # only the missing rounds train, and they continue from the recorded selections.
    trained.clear()
    other = _simulation_args(bench, tmp_path / "other", val_json, rounds=3)
    resumed = bench.Simulation(other, pool, tmp_path / "other.jsonl", lines[:3])
    resumed.run_seed(0, methods)
    assert [run.relative_to(other.work).as_posix() for run in trained] == [
        "coreset/seed0/round1/run",
        "random/seed0/round2/run",
        "coreset/seed0/round2/run",
    ]
    final = {(row["method"], row["round"]): row["labelled_ids"] for row in resumed.rows()}
    assert final == {(row["method"], row["round"]): row["labelled_ids"] for row in lines}


def test_a_round_without_its_selection_cannot_be_continued(bench) -> None:  # noqa: ANN001
    row = {**_row("random", 0, 0, 1, 10, 0.1), "labelled_ids": [3]}
    with pytest.raises(SystemExit, match="records no selected_ids"):
        bench.next_round([row], rounds=2)
    assert bench.next_round([{**row, "selected_ids": [5, 4]}], rounds=2) == (1, {3, 4, 5})
    assert bench.next_round([{**row, "selected_ids": []}], rounds=2) is None  # the pool ran out
    assert bench.next_round([{**row, "round": 1}], rounds=2) is None  # the last round


def _protocol_args(tmp_path: Path, resume: bool) -> argparse.Namespace:
    return argparse.Namespace(
        out=tmp_path,
        pool=Path("pool.json"),
        val=Path("val.json"),
        config=Path("config.yaml"),
        override=["schedule.iterations=3"],
        initial_fraction=0.1,
        step_fraction=0.1,
        rounds=2,
        resume=resume,
    )


def test_resume_keeps_every_round_and_never_overwrites_a_log(bench, tmp_path: Path) -> None:  # noqa: ANN001
    assert bench.start_log(_protocol_args(tmp_path, resume=False)) == []
    rows = [
        _row("random", 0, 0, 1, 10, 0.1),
        _row("random", 0, 1, 2, 20, 0.3),
        _row("coreset", 0, 0, 1, 10, 0.1),  # stopped after its first round: continues from it
        _row("hybrid", 1, 0, 10, 90, 0.5),  # the pool ran out after one round: finished
    ]
    log = tmp_path / "rounds.jsonl"
    log.write_text("".join(json.dumps(row) + "\n" for row in rows))
    with pytest.raises(SystemExit, match="pass --resume"):
        bench.start_log(_protocol_args(tmp_path, resume=False))
    assert len(log.read_text().splitlines()) == 4  # nothing lost
    kept = bench.start_log(_protocol_args(tmp_path, resume=True))
    assert kept == rows
    assert [json.loads(line) for line in log.read_text().splitlines()] == kept
    changed = _protocol_args(tmp_path, resume=True)
    changed.rounds = 3
    with pytest.raises(SystemExit, match="another protocol"):
        bench.start_log(changed)


def test_a_finished_round_is_reused_for_the_same_images_and_retrained_for_others(
    bench, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:  # noqa: ANN001
    pool_json, val_json = bench.smoke_data(tmp_path)
    pool = bench.read_coco(pool_json, strict=True)
    args = argparse.Namespace(
        config=bench.SMOKE_CONFIG, val=val_json, override=list(bench.SMOKE_OVERRIDES), work=tmp_path / "runs"
    )
    trained = _fake_rounds(bench, monkeypatch)
    first = bench.round_folder(args.work, bench.Method.CORESET, 0, 0)
    assert first == bench.round_folder(args.work, bench.Method.RANDOM, 0, 0)  # round 0: one run per seed
    ap, checkpoint = bench.train_round(args, pool, {1, 2, 3}, first, 0)
    assert (ap, checkpoint) == (pytest.approx(0.1), first / "run" / "last.pt")
    assert bench.train_round(args, pool, {3, 2, 1}, first, 0)[0] == pytest.approx(0.1)  # reused
    assert len(trained) == 1
    assert bench.read_coco(first / "train.json").images[0].id == 1
    assert bench.train_round(args, pool, {1, 2, 4}, first, 0)[0] == pytest.approx(0.2)  # other images
    assert bench.train_round(args, pool, {1, 2, 4}, first, 1)[0] == pytest.approx(0.3)  # another seed
    assert len(trained) == 3
    later = bench.round_folder(args.work, bench.Method.CORESET, 0, 1)
    assert later != bench.round_folder(args.work, bench.Method.RANDOM, 0, 1)


def test_report_writes_the_summary_and_plot_of_the_rounds_so_far(bench, tmp_path: Path, capsys) -> None:  # noqa: ANN001
    rows = [
        _row("random", 0, 0, 1, 10, 0.1),
        _row("random", 0, 1, 2, 20, 0.3),
        _row("coreset", 0, 0, 1, 10, 0.1),
    ]
    bench.report(tmp_path, rows)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["random"]["rounds"][1]["segm_AP_mean"] == pytest.approx(0.3)
    assert summary["coreset"]["seeds"] == 1
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "from 3 rounds" in capsys.readouterr().out
