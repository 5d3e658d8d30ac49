"""Active learning measured honestly: simulated annotation rounds, every method against random, several seeds.

Full protocol (issue 19; 3 seeds x (1 shared + 4 methods x 5) rounds = 63 training runs of the fastest
family, CondInst, at 1,000 iterations: about 32 hours of a 2-core CPU, carried across sessions and machines
by `--resume`; 250 iterations, 4x cheaper, proved too short: random's curve stayed flat, docs/models.md):

    .venv/bin/python benchmarks/bench_active_learning.py --pool runs/nuclei/train.json \
        --val runs/nuclei/val.json --config configs/nuclei_condinst.yaml \
        --override schedule.iterations=1000 --override schedule.warmup_iterations=50 \
        --methods random,mean-uncertainty,coreset,hybrid --seeds 0,1,2 \
        --initial-fraction 0.05 --step-fraction 0.05 --rounds 6 \
        --out benchmarks/results/al_nuclei_1000 --work runs/al_nuclei_1000 --resume

On a 2-core CPU run one process per seed instead (`--seeds 0 --threads 1`, `--seeds 1 --threads 1`, the
rest as above): two 1-thread trainings side by side do about 1.25x the work of one 2-thread training.

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

Outputs in --out: `rounds.jsonl` (one line per method, seed and round: images, objects, AP, the labelled
image ids and the ids its model selected for the next round), `protocol.json` (data, config, overrides,
fractions, rounds), `summary.json` (per method and round mean and std of AP, images and objects; AUCs mean
and std over seeds), `curves.png` (mean AP with a +-1 std band against images and against objects); the
rounds' training runs go to `--work` (default OUT/runs).
`--summary-only --out OUT` rewrites `summary.json` and `curves.png` from `rounds.jsonl` alone (the curves of
a stopped run so far, compared over the budget range they all cover).
Results and the command that made them go to docs/models.md ("Active learning").

Resuming (the full protocol outlasts a session and a machine): every round's line in `rounds.jsonl` holds
its labelled images and the images its model selected for the next round (`selected_ids`), so `--resume`
continues each (method, seed) curve from its last recorded round on any machine; the models themselves are
not needed again. Rounds run seed by seed and, within a seed, round by round (every method's round k before
any method's round k + 1), so a stopped run leaves the methods compared at the same budgets. Round 0 (the
seed set every method of a seed shares) is one model per seed; each method ranks with it and their round-0
lines are written together. `--resume` refuses a `protocol.json` that differs from this run's; without it,
an existing `rounds.jsonl` is an error, never overwritten. On one machine a round whose run in `--work`
finished for the same labelled images, seed and recipe (its `result.json`) is reused, not retrained. Keeping
`--out` in the repository (`benchmarks/results/...`) carries the curves from one machine to the next.
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


def next_round(curve: list[dict], rounds: int) -> tuple[int, set[int]] | None:
    """Where a (method, seed) curve of `rounds.jsonl` continues: the next round's index and labelled images
    (its last row's images and the ones that row's model selected), or None when the curve is finished (all
    `rounds` rounds, or the pool ran out)."""
    last = curve[-1]
    if last["round"] == rounds - 1:
        return None
    if "selected_ids" not in last:
        raise SystemExit(
            f"rounds.jsonl: {last['method']} seed {last['seed']} round {last['round']} records no "
            "selected_ids (written by an earlier version of this benchmark): continue it in a new --out"
        )
    if not last["selected_ids"]:
        return None
    return last["round"] + 1, set(last["labelled_ids"]) | set(last["selected_ids"])


class Simulation:
    """The simulation's state: the pool, where rounds are logged, and every (method, seed) curve so far."""

    def __init__(self, args: argparse.Namespace, pool: Dataset, log: Path, rows: list[dict]) -> None:
        self.args = args
        self.pool = pool
        self.log = log
        self.ids = sorted(image.id for image in pool.images)
        self.objects = {image.id: len(image.annotations) for image in pool.images}
        self.paths = {image.id: pool.image_path(image) for image in pool.images}
        self.by_path = {path.resolve(): image_id for image_id, path in self.paths.items()}
        self.step = max(1, round(args.step_fraction * len(self.ids)))
        self.curves: dict[tuple[str, int], list[dict]] = {}
        for row in sorted(rows, key=lambda row: row["round"]):
            self.curves.setdefault((row["method"], row["seed"]), []).append(row)

    def seed_set(self, seed: int) -> set[int]:
        """Round 0's images for this seed: a seeded draw of `--initial-fraction` of the pool."""
        first = max(1, round(self.args.initial_fraction * len(self.ids)))
        return set(np.random.default_rng(seed).choice(self.ids, size=first, replace=False).tolist())

    def run_seed(self, seed: int, methods: list[Method]) -> None:
        """All rounds of every method for one seed, round by round (each round's methods side by side)."""
        self.first_round(seed, methods)
        for round_index in range(1, self.args.rounds):
            for method in methods:
                state = next_round(self.curves[(method.value, seed)], self.args.rounds)
                if state is not None and state[0] == round_index:
                    self.later_round(method, seed, round_index, state[1])

    def first_round(self, seed: int, methods: list[Method]) -> None:
        """Round 0: one model on the seed set, shared by the methods, each ranking with it; their rows are
        written together, so every method of a seed continues from the same model."""
        missing = [method for method in methods if (method.value, seed) not in self.curves]
        if not missing:
            return
        labelled = self.seed_set(seed)
        ap, checkpoint = train_round(
            self.args, self.pool, labelled, round_folder(self.args.work, missing[0], seed, 0), seed
        )
        rows = [self.row(method, seed, 0, labelled, ap, checkpoint) for method in missing]
        self.write(rows)

    def later_round(self, method: Method, seed: int, round_index: int, labelled: set[int]) -> None:
        folder = round_folder(self.args.work, method, seed, round_index)
        ap, checkpoint = train_round(self.args, self.pool, labelled, folder, seed)
        self.write([self.row(method, seed, round_index, labelled, ap, checkpoint)])

    def row(
        self, method: Method, seed: int, round_index: int, labelled: set[int], ap: float, checkpoint: Path
    ) -> dict:
        """A round's record, with the images its model selects for the next round (none after the last)."""
        return {
            "method": method.value,
            "seed": seed,
            "round": round_index,
            "images": len(labelled),
            "image_fraction": len(labelled) / len(self.ids),
            "objects": sum(self.objects[i] for i in labelled),
            "segm_AP": ap,
            "labelled_ids": sorted(labelled),
            "selected_ids": sorted(self.select(method, seed, round_index, labelled, checkpoint)),
        }

    def select(
        self, method: Method, seed: int, round_index: int, labelled: set[int], checkpoint: Path
    ) -> set[int]:
        """The `--step-fraction` of the pool this round's model ranks first among the unlabelled images."""
        unlabelled = [i for i in self.ids if i not in labelled]
        if round_index == self.args.rounds - 1 or not unlabelled:
            return set()
        ranking = rank_images(
            [self.paths[i] for i in unlabelled],
            load_model(checkpoint),
            method,
            min(self.step, len(unlabelled)),
            RankOptions(seed=seed * 1000 + round_index, device=self.args.rank_device),
            labelled=[self.paths[i] for i in sorted(labelled)],
            progress=False,
        )
        return {self.by_path[image.path.resolve()] for image in ranking.selected}

    def write(self, rows: list[dict]) -> None:
        # One appending write per call: processes running other seeds (`--seeds 1` next to `--seeds 0`)
        # append to the same log without interleaving lines.
        with self.log.open("a") as stream:
            stream.write("".join(json.dumps(row) + "\n" for row in rows))
        for row in rows:
            self.curves.setdefault((row["method"], row["seed"]), []).append(row)
            print(
                f"{row['method']} seed {row['seed']} round {row['round']}: {row['images']} images, "
                f"AP {row['segm_AP']:.4f}",
                flush=True,
            )

    def rows(self) -> list[dict]:
        return [row for curve in self.curves.values() for row in curve]


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


def read_rounds(log: Path) -> list[dict]:
    """The rounds recorded in a `rounds.jsonl`, one dict a line."""
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]


def start_log(args: argparse.Namespace) -> list[dict]:
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
        rows = read_rounds(log)
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
        help="continue the run in --out: each (method, seed) curve from its last recorded round",
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="synthetic pool of 12 and val of 4, configs/synthetic_smoke.yaml at 64 px and 3 iterations, "
        "methods random,mean-uncertainty,coreset, seeds 0,1, 2 rounds of 25%%",
    )
    parser.add_argument(
        "--summary-only",
        action="store_true",
        help="write summary.json and curves.png from --out's rounds.jsonl (of a stopped run); train nothing",
    )
    args = parser.parse_args()
    if args.summary_only:
        log = args.out / "rounds.jsonl"
        if not log.is_file():
            parser.error(f"--summary-only: {log} does not exist")
        report(args.out, read_rounds(log))
        return 0
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
    simulation = Simulation(args, pool, log, start_log(args))
    for seed in seeds:
        simulation.run_seed(seed, methods)
    rows = simulation.rows()
    report(args.out, rows)
    return 0 if all(math.isfinite(r["segm_AP"]) for r in rows) else 1


def report(out: Path, rows: list[dict]) -> None:
    """`summary.json` and `curves.png` in `out` from these rounds, and each method's AUCs printed."""
    summary = summarise(rows)
    with atomic_write(out / "summary.json", "w") as stream:
        stream.write(json.dumps(summary, indent=1) + "\n")
    plot(summary, out / "curves.png")
    for method in sorted({row["method"] for row in rows}):
        data = summary[method]
        print(
            f"{method:18s} AUC images {data['auc_images_mean']:.4f} ± {data['auc_images_std']:.4f}   "
            f"objects {data['auc_objects_mean']:.4f} ± {data['auc_objects_std']:.4f}"
        )
    print(f"wrote {out / 'summary.json'}, {out / 'curves.png'} from {len(rows)} rounds")


if __name__ == "__main__":
    raise SystemExit(main())
