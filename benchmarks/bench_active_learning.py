"""Active learning measured honestly: simulated annotation rounds, every method against random, several seeds.

Full protocol (issue 19; 3 seeds x (1 shared + 4 methods x 5) rounds = 63 training runs of the fastest
family, CondInst, at 1,000 iterations: about 32 hours of a 2-core CPU, carried across sessions by
`--resume`; 250 iterations, 4x cheaper, proved too short: random's curve stayed flat, docs/models.md):

    .venv/bin/python benchmarks/bench_active_learning.py --pool runs/nuclei/train.json \
        --val runs/nuclei/val.json --config configs/nuclei_condinst.yaml \
        --override schedule.iterations=1000 --override schedule.warmup_iterations=50 \
        --methods random,mean-uncertainty,coreset,hybrid --seeds 0,1,2 \
        --initial-fraction 0.05 --step-fraction 0.05 --rounds 6 \
        --out benchmarks/results/al_nuclei_1000 --work runs/al_nuclei_1000 --resume

Smoke run (synthetic data, the tiny ResNet-18 recipe, a few iterations per round; minutes on 2 CPU cores;
it checks the machinery, its numbers mean nothing):

    .venv/bin/python benchmarks/bench_active_learning.py --smoke --out runs/al_smoke

Protocol. The pool is the training split (`--pool`); the validation split (`--val`) stays outside it and is
only ever evaluated on, never ranked or trained on. For each seed, a random `--initial-fraction` of the pool
is the seed set, the same for every method of that seed (a paired comparison). Each round trains a model from
the same start (`--config`: its ImageNet backbone weights, the same schedule, `train.seed` = the seed, EMA
off, one evaluation at the end), records mask AP on the validation split, then ranks the pool images not yet
labelled with that model by the method (`instaseg.active.rank_images`, core-set with the labelled images as
its centres) and "annotates" the top `--step-fraction` of the pool: their ground truth joins the training
set. `random` is ranked by a seeded draw through the same code, with the same recipe and rounds: no method
gets a schedule, a threshold or a retry that random does not.

Budget is counted two ways: images, and annotated objects (what an annotator's time goes into; a method
that picks crowded images pays more per image). Area under the curve (AUC) is the mean AP over the budget
range by the trapezoid rule: over the fraction of pool images [first round, last round], and over the
object count range that every run covers (each run's curve interpolated onto it), so runs are compared on
the same interval.

Outputs in --out: `rounds.jsonl` (one line per method, seed and round: images, objects, AP, the chosen
image ids), `protocol.json` (data, config, overrides, fractions, rounds), `summary.json` (per method and round
mean and std of AP, images and objects; AUCs mean and std over seeds), `curves.png` (mean AP with a +-1 std
band against images and against objects); the rounds' training runs go to `--work` (default OUT/runs).
Results and the command that made them go to docs/models.md ("Active learning").

Resuming (the full protocol outlasts a session): `--resume` keeps the finished (method, seed) curves of
`rounds.jsonl`, reruns an unfinished one from its first round, and refuses a `protocol.json` that differs
from this run's. A rerun curve is the same sequence of models: a round whose run in `--work` finished for
the same labelled images, seed and recipe (its `result.json`) is reused, not retrained, and ranking with
that model picks the same images again. Round 0 (the seed set every method of a seed shares) is one run
per seed for the same reason. Without `--resume`, an existing `rounds.jsonl` is an error, never
overwritten. Keeping `--out` in the repository (`benchmarks/results/...`) carries the finished curves from
one machine to the next; `--work` under `runs/` carries the finished rounds while the machine lasts.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from instaseg.active.ranking import Method, RankOptions, rank_images
from instaseg.data.coco import read_coco, write_coco
from instaseg.data.records import Dataset
from instaseg.data.synthetic import make_synthetic_dataset
from instaseg.engine.config import load_config
from instaseg.engine.trainer import train
from instaseg.io.atomic import atomic_write
from instaseg.models.loading import load_model

REPO = Path(__file__).resolve().parents[1]
SMOKE_CONFIG = REPO / "configs" / "synthetic_smoke.yaml"
# The smoke run's recipe: configs/synthetic_smoke.yaml at 64 px, 3 iterations, few detections.
SMOKE_OVERRIDES = [
    "schedule.iterations=3",
    "schedule.warmup_iterations=1",
    "train.checkpoint_period=0",
    "model.settings.min_size=64",
    "model.settings.max_size=96",
    "model.settings.box_detections_per_img=20",
]


def write_subset(pool: Dataset, image_ids: set[int], path: Path) -> None:
    """The pool's images with these ids (and their annotations) as a COCO file at `path`."""
    images = [image for image in pool.images if image.id in image_ids]
    write_coco(Dataset(images, pool.categories, pool.root), path)


def round_folder(work: Path, method: Method, seed: int, round_index: int) -> Path:
    """Where a round's training run lives. Round 0 trains on the seed set that every method of a seed shares,
    so it is one run per seed, not one per method."""
    if round_index == 0:
        return work / f"seed{seed}" / "round0"
    return work / method.value / f"seed{seed}" / f"round{round_index}"


def train_round(
    args: argparse.Namespace, pool: Dataset, labelled: set[int], folder: Path, seed: int
) -> tuple[float, Path]:
    """Train one round on the pool images `labelled` from the config's start; (validation mask AP, the
    checkpoint). A finished run in `folder` for the same images, seed and recipe (its `result.json`) is
    reused instead of retrained: the same model, so an interrupted curve continues where it stopped."""
    key = {
        "labelled_ids": sorted(labelled),
        "seed": seed,
        "config": str(args.config),
        "val": str(args.val),
        "override": list(args.override),
    }
    result_path, checkpoint = folder / "result.json", folder / "run" / "last.pt"
    if result_path.exists() and checkpoint.exists():
        earlier = json.loads(result_path.read_text())
        if earlier["key"] == key:
            return float(earlier["segm_AP"]), checkpoint
    folder.mkdir(parents=True, exist_ok=True)
    write_subset(pool, labelled, folder / "train.json")
    settings = [
        f"output_dir={folder / 'run'}",
        f"data.train.path={folder / 'train.json'}",
        "data.train.format=coco",
        f"data.val.path={args.val}",
        "data.val.format=coco",
        f"train.seed={seed}",
        "train.ema_decay=null",
        "train.eval_period=0",
        *args.override,
    ]
    result = train(load_config(args.config, settings), overwrite=True, progress=False)
    if result.last_eval is None or "segm_AP" not in result.last_eval:
        raise RuntimeError(f"{folder}: the run ended without a validation mask AP")
    ap = float(result.last_eval["segm_AP"])
    with atomic_write(result_path, "w") as stream:
        stream.write(json.dumps({"key": key, "segm_AP": ap}) + "\n")
    return ap, checkpoint


def simulate(args: argparse.Namespace, method: Method, seed: int, pool: Dataset, log: Path) -> list[dict]:
    """All rounds of one method and seed; appends one line per round to `log`."""
    ids = sorted(image.id for image in pool.images)
    objects = {image.id: len(image.annotations) for image in pool.images}
    paths = {image.id: pool.image_path(image) for image in pool.images}
    by_path = {path.resolve(): image_id for image_id, path in paths.items()}
    first = max(1, round(args.initial_fraction * len(ids)))
    step = max(1, round(args.step_fraction * len(ids)))
    labelled = set(np.random.default_rng(seed).choice(ids, size=first, replace=False).tolist())
    rows = []
    for round_index in range(args.rounds):
        folder = round_folder(args.work, method, seed, round_index)
        ap, checkpoint = train_round(args, pool, labelled, folder, seed)
        row = {
            "method": method.value,
            "seed": seed,
            "round": round_index,
            "images": len(labelled),
            "image_fraction": len(labelled) / len(ids),
            "objects": sum(objects[i] for i in labelled),
            "segm_AP": ap,
            "labelled_ids": sorted(labelled),
        }
        rows.append(row)
        with log.open("a") as stream:
            stream.write(json.dumps(row) + "\n")
        print(
            f"{method.value} seed {seed} round {round_index}: {len(labelled)} images, AP {ap:.4f}", flush=True
        )
        unlabelled = [i for i in ids if i not in labelled]
        if round_index == args.rounds - 1 or not unlabelled:
            break
        ranking = rank_images(
            [paths[i] for i in unlabelled],
            load_model(checkpoint),
            method,
            min(step, len(unlabelled)),
            RankOptions(seed=seed * 1000 + round_index, device=args.rank_device),
            labelled=[paths[i] for i in sorted(labelled)],
            progress=False,
        )
        labelled |= {by_path[image.path.resolve()] for image in ranking.selected}
    return rows


def area_under_curve(x: np.ndarray, y: np.ndarray, low: float, high: float) -> float:
    """Mean of y over [low, high] by the trapezoid rule on the curve interpolated onto that interval."""
    if not high > low:
        return float(y.mean())
    grid = np.linspace(low, high, 201)
    return float(np.trapezoid(np.interp(grid, x, y), grid) / (high - low))


def summarise(rows: list[dict]) -> dict:
    """Per method: per-round mean / std of AP, images and objects, and the two AUCs' mean / std over seeds."""
    runs: dict[tuple[str, int], list[dict]] = {}
    for row in rows:
        runs.setdefault((row["method"], row["seed"]), []).append(row)
    curves = {key: sorted(value, key=lambda r: r["round"]) for key, value in runs.items()}
    fraction_low = max(c[0]["image_fraction"] for c in curves.values())
    fraction_high = min(c[-1]["image_fraction"] for c in curves.values())
    objects_low = max(c[0]["objects"] for c in curves.values())
    objects_high = min(c[-1]["objects"] for c in curves.values())
    summary: dict = {
        "auc_ranges": {
            "image_fraction": [fraction_low, fraction_high],
            "objects": [objects_low, objects_high],
        }
    }
    for method in sorted({method for method, _ in curves}):
        seeds = [curve for (m, _), curve in curves.items() if m == method]
        rounds = []
        for round_index in range(max(len(curve) for curve in seeds)):
            at = [curve[round_index] for curve in seeds if len(curve) > round_index]
            rounds.append(
                {
                    "round": round_index,
                    "runs": len(at),
                    **{
                        f"{key}_{stat}": float(fn([r[key] for r in at]))
                        for key in ("segm_AP", "images", "objects")
                        for stat, fn in (("mean", np.mean), ("std", np.std))
                    },
                }
            )

        def aucs(
            key: str, low: float, high: float, curves_of_method: list[list[dict]] = seeds
        ) -> list[float]:
            return [
                area_under_curve(
                    np.array([r[key] for r in c], dtype=float), np.array([r["segm_AP"] for r in c]), low, high
                )
                for c in curves_of_method
            ]

        by_images = aucs("image_fraction", fraction_low, fraction_high)
        by_objects = aucs("objects", objects_low, objects_high)
        summary[method] = {
            "seeds": len(seeds),
            "rounds": rounds,
            "auc_images_mean": float(np.mean(by_images)),
            "auc_images_std": float(np.std(by_images)),
            "auc_objects_mean": float(np.mean(by_objects)),
            "auc_objects_std": float(np.std(by_objects)),
        }
    return summary


def plot(summary: dict, path: Path) -> None:
    """Mean AP +- 1 std against images and against objects, one line per method."""
    figure = Figure(figsize=(11, 4.2))
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, 2)
    for method, data in summary.items():
        if method == "auc_ranges":
            continue
        ap = np.array([r["segm_AP_mean"] for r in data["rounds"]])
        band = np.array([r["segm_AP_std"] for r in data["rounds"]])
        for axis, key, auc in ((axes[0], "images", "auc_images"), (axes[1], "objects", "auc_objects")):
            x = np.array([r[f"{key}_mean"] for r in data["rounds"]])
            label = f"{method} (AUC {data[f'{auc}_mean']:.3f} ± {data[f'{auc}_std']:.3f})"
            axis.plot(x, ap, marker="o", label=label)
            axis.fill_between(x, ap - band, ap + band, alpha=0.2)
    for axis, name in ((axes[0], "annotated images"), (axes[1], "annotated objects")):
        axis.set_xlabel(name)
        axis.set_ylabel("validation mask AP")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def smoke_data(out: Path) -> tuple[Path, Path]:
    pool = make_synthetic_dataset(out / "data" / "pool", 12, seed=0)
    val = make_synthetic_dataset(out / "data" / "val", 4, seed=1)
    return pool, val


def protocol_of(args: argparse.Namespace) -> dict:
    """What must not change between a run and its `--resume`: data, recipe and rounds."""
    return {
        "pool": str(args.pool),
        "val": str(args.val),
        "config": str(args.config),
        "override": list(args.override),
        "initial_fraction": args.initial_fraction,
        "step_fraction": args.step_fraction,
        "rounds": args.rounds,
    }


def completed_curves(log: Path, rounds: int, pool_size: int) -> list[dict]:
    """The rows of `log` that belong to finished (method, seed) curves: all `rounds` rounds, or fewer when
    the pool ran out. Rows of an unfinished curve (a run stopped mid-way) are left out: it reruns whole, so
    every curve's rounds come from one uninterrupted sequence of models."""
    rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    curves: dict[tuple[str, int], list[dict]] = {}
    for row in rows:
        curves.setdefault((row["method"], row["seed"]), []).append(row)
    kept = []
    for curve in curves.values():
        curve.sort(key=lambda row: row["round"])
        if len(curve) == rounds or curve[-1]["images"] == pool_size:
            kept += curve
    return kept


def start_log(args: argparse.Namespace, pool_size: int) -> list[dict]:
    """Prepare `--out` for a run: the finished rows to continue from (`--resume`), else an empty log. Never
    overwrites an earlier run's results: without `--resume` an existing log is an error."""
    log, protocol_path = args.out / "rounds.jsonl", args.out / "protocol.json"
    protocol = protocol_of(args)
    if log.exists() and log.stat().st_size and not args.resume:
        raise SystemExit(f"{log} holds an earlier run: pass --resume to continue it, or choose another --out")
    rows: list[dict] = []
    if args.resume and log.exists():
        earlier = json.loads(protocol_path.read_text()) if protocol_path.exists() else None
        if earlier != protocol:
            raise SystemExit(
                f"--resume: {protocol_path} records another protocol ({earlier}); this run is {protocol}"
            )
        rows = completed_curves(log, args.rounds, pool_size)
    with atomic_write(protocol_path, "w") as stream:
        stream.write(json.dumps(protocol, indent=1) + "\n")
    with atomic_write(log, "w") as stream:
        stream.writelines(json.dumps(row) + "\n" for row in rows)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pool", type=Path, help="COCO JSON of the training pool")
    parser.add_argument("--val", type=Path, help="COCO JSON of the fixed validation split (never ranked)")
    parser.add_argument(
        "--config", type=Path, help="training config (the same start and schedule each round)"
    )
    parser.add_argument("--methods", default="random,mean-uncertainty,tta-disagreement,coreset")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--initial-fraction", type=float, default=0.05)
    parser.add_argument("--step-fraction", type=float, default=0.05)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--override", action="append", default=[], help="extra KEY=VALUE for every round")
    parser.add_argument("--rank-device", default="cpu")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument(
        "--out", type=Path, required=True, help="results: rounds.jsonl, protocol.json, summary.json, plot"
    )
    parser.add_argument("--work", type=Path, help="the rounds' training runs (default: OUT/runs)")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out: its finished (method, seed) curves are kept, the rest rerun",
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="synthetic pool of 12 and val of 4, configs/synthetic_smoke.yaml at 64 px and 3 iterations, "
        "methods random,mean-uncertainty,coreset, seeds 0,1, 2 rounds of 25%%",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.smoke:
        args.pool, args.val = smoke_data(args.out)
        args.config = SMOKE_CONFIG
        args.methods, args.seeds, args.rounds = "random,mean-uncertainty,coreset", "0,1", 2
        args.initial_fraction = args.step_fraction = 0.25
        args.override += SMOKE_OVERRIDES
    if args.pool is None or args.val is None or args.config is None:
        parser.error("--pool, --val and --config are needed (or --smoke)")
    methods = [Method(name) for name in args.methods.split(",")]
    seeds = [int(seed) for seed in args.seeds.split(",")]
    if not 0 < args.initial_fraction < 1 or not 0 < args.step_fraction < 1 or args.rounds < 1:
        parser.error("fractions must lie in (0, 1) and --rounds be >= 1")
    pool = read_coco(args.pool, strict=True)
    args.out.mkdir(parents=True, exist_ok=True)
    args.work = args.work or args.out / "runs"
    log = args.out / "rounds.jsonl"
    rows = start_log(args, len(pool.images))
    done = {(row["method"], row["seed"]) for row in rows}
    for seed in seeds:
        for method in methods:
            if (method.value, seed) in done:
                print(f"{method.value} seed {seed}: finished in {log}, skipped")
                continue
            rows += simulate(args, method, seed, pool, log)
    summary = summarise(rows)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    plot(summary, args.out / "curves.png")
    for method in (m.value for m in methods):
        data = summary[method]
        print(
            f"{method:18s} AUC images {data['auc_images_mean']:.4f} ± {data['auc_images_std']:.4f}   "
            f"objects {data['auc_objects_mean']:.4f} ± {data['auc_objects_std']:.4f}"
        )
    print(f"wrote {log}, {args.out / 'summary.json'}, {args.out / 'curves.png'}")
    return 0 if all(math.isfinite(r["segm_AP"]) for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
