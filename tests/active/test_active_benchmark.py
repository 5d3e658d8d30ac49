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
def test_two_rounds_of_core_set_on_synthetic_data(bench, tmp_path: Path) -> None:  # noqa: ANN001
    pool_json, val_json = bench.smoke_data(tmp_path)
    pool = bench.read_coco(pool_json, strict=True)
    args = argparse.Namespace(
        out=tmp_path,
        work=tmp_path / "runs",
        config=bench.SMOKE_CONFIG,
        val=val_json,
        initial_fraction=0.25,
        step_fraction=0.25,
        rounds=2,
        rank_device="cpu",
        override=[*bench.SMOKE_OVERRIDES, "schedule.iterations=2"],
    )
    rows = bench.simulate(args, bench.Method.CORESET, 0, pool, tmp_path / "rounds.jsonl")
    assert [(row["round"], row["images"]) for row in rows] == [(0, 3), (1, 6)]
    assert set(rows[0]["labelled_ids"]) < set(rows[1]["labelled_ids"])
    assert all(0.0 <= row["segm_AP"] <= 1.0 for row in rows)
    assert len((tmp_path / "rounds.jsonl").read_text().splitlines()) == 2


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


def test_resume_keeps_finished_curves_and_never_overwrites_a_log(bench, tmp_path: Path) -> None:  # noqa: ANN001
    assert bench.start_log(_protocol_args(tmp_path, resume=False), pool_size=10) == []
    rows = [
        _row("random", 0, 0, 1, 10, 0.1),
        _row("random", 0, 1, 2, 20, 0.3),
        _row("coreset", 0, 0, 1, 10, 0.1),  # stopped after its first round
        _row("hybrid", 1, 0, 10, 90, 0.5),  # the pool ran out after one round: finished
    ]
    log = tmp_path / "rounds.jsonl"
    log.write_text("".join(json.dumps(row) + "\n" for row in rows))
    with pytest.raises(SystemExit, match="pass --resume"):
        bench.start_log(_protocol_args(tmp_path, resume=False), pool_size=10)
    assert len(log.read_text().splitlines()) == 4  # nothing lost
    kept = bench.start_log(_protocol_args(tmp_path, resume=True), pool_size=10)
    assert [(row["method"], row["round"]) for row in kept] == [("random", 0), ("random", 1), ("hybrid", 0)]
    assert [json.loads(line) for line in log.read_text().splitlines()] == kept
    changed = _protocol_args(tmp_path, resume=True)
    changed.rounds = 3
    with pytest.raises(SystemExit, match="another protocol"):
        bench.start_log(changed, pool_size=10)


def test_a_finished_round_is_reused_for_the_same_images_and_retrained_for_others(
    bench, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:  # noqa: ANN001
    pool_json, val_json = bench.smoke_data(tmp_path)
    pool = bench.read_coco(pool_json, strict=True)
    args = argparse.Namespace(
        config=bench.SMOKE_CONFIG, val=val_json, override=list(bench.SMOKE_OVERRIDES), work=tmp_path / "runs"
    )
    trained: list[Path] = []

    def fake_train(config, overwrite: bool, progress: bool):  # noqa: ANN001, ANN202 (the trainer's signature)
        run = Path(config.output_dir)
        run.mkdir(parents=True, exist_ok=True)
        (run / "last.pt").write_bytes(b"checkpoint")
        trained.append(run)
        return argparse.Namespace(last_eval={"segm_AP": 0.1 * len(trained)})

    monkeypatch.setattr(bench, "train", fake_train)
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
