"""The quality gate before traffic: a candidate version is evaluated on its model's golden set (a labelled
sample kept with the registry) and refused when it scores more than a margin below the production version.

A golden set is a COCO instances file plus the folder its `file_name`s are relative to, the metric that
gates (`mask_ap`: COCO mask AP; `dsb`: the Data Science Bowl score; `pq`: Panoptic Quality, all from
`instaseg.evaluation`) and the margin (in the metric's units, e.g. 0.02 = two AP points). Both versions are
predicted with `instaseg.inference.Predictor` at score threshold 0.05, so AP sees every detection; the DSB
score and PQ count the detections at or above each version's own operating-point score threshold (what it
serves). The file's sha256 is recorded when the set is defined, so a golden set edited in place afterwards
is refused until it is set again.

`check_promotion` is what `instaseg models promote` and `set-canary` call before they change the registry:
it evaluates both versions, stores the decision with the candidate (`ModelRegistry.record_quality_gate`)
and raises `GateRefused` on a regression unless forced; it never changes the deployment itself.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from instaseg.io.files import file_sha256
from instaseg.serving.registry import ModelRegistry, ModelVersion

__all__ = [
    "GATE_METRICS",
    "GOLDEN_SCORE_THRESHOLD",
    "GateDecision",
    "GateError",
    "GateRefused",
    "GoldenScore",
    "GoldenSet",
    "check_promotion",
    "decide",
    "define_golden_set",
    "evaluate_on_golden_set",
]

_log = logging.getLogger(__name__)

GATE_METRICS = {"mask_ap": "mask AP", "dsb": "DSB score", "pq": "PQ"}
# Every detection counts for AP: the score threshold COCO evaluation uses.
GOLDEN_SCORE_THRESHOLD = 0.05


class GateError(ValueError):
    """The gate cannot decide: a golden set that is missing, changed or unreadable, a candidate that fails."""


class GateRefused(GateError):
    """The candidate regressed on the golden set (and the promotion was not forced); `decision` says by how
    much."""

    def __init__(self, decision: GateDecision) -> None:
        super().__init__(decision.message())
        self.decision = decision


@dataclass(frozen=True)
class GoldenSet:
    """A model name's golden set. `annotations`: COCO instances JSON; `images`: the folder its images'
    `file_name`s are relative to; `sha256`: of `annotations` when the set was defined."""

    annotations: str
    images: str
    sha256: str
    metric: str = "mask_ap"
    margin: float = 0.01

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GoldenSet:
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def load(self) -> tuple[dict, list[tuple[int, Path]]]:
        """The ground truth and `(image id, file)` of each of its images; raises `GateError` naming the
        file, or the images that are missing."""
        path = Path(self.annotations)
        if not path.is_file():
            raise GateError(f"golden set annotations not found: {path}")
        if file_sha256(path) != self.sha256:
            raise GateError(
                f"golden set annotations {path} changed since the golden set was defined (sha256 "
                f"{self.sha256[:12]}...); check it and set it again (instaseg models set-golden)"
            )
        return _read_golden(path, Path(self.images))


@dataclass(frozen=True)
class GoldenScore:
    """One version's result on a golden set: the gating `metric`'s `value`, and mask AP always."""

    version: int
    metric: str
    value: float
    mask_ap: float
    num_images: int
    num_detections: int


@dataclass(frozen=True)
class GateDecision:
    """The gate's verdict on promoting `candidate` of `name` over `production` (None: nothing to compare
    with, the candidate passes). `passed` is the verdict on the numbers; `forced` says it was overridden."""

    name: str
    metric: str
    margin: float
    candidate: GoldenScore
    production: GoldenScore | None
    passed: bool
    forced: bool
    golden_sha256: str
    decided_at: str

    def message(self) -> str:
        label = GATE_METRICS[self.metric]
        ours = f"{self.name} v{self.candidate.version} {label} {self.candidate.value:.4f}"
        if self.production is None:
            return f"{ours}; no production version to compare with: passed"
        theirs = f"production v{self.production.version} {self.production.value:.4f}"
        verdict = "passed" if self.passed else "REFUSED (regression)"
        if self.forced and not self.passed:
            verdict = "regression, promoted anyway (--force)"
        return f"{ours} vs {theirs} (allowed margin {self.margin:g}): {verdict}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def define_golden_set(
    registry: ModelRegistry,
    name: str,
    annotations: str | Path,
    images: str | Path,
    metric: str = "mask_ap",
    margin: float = 0.01,
) -> GoldenSet:
    """Check and store the golden set of model `name`: the annotations must be valid COCO and every image
    must exist (the missing ones are named); `metric` one of `GATE_METRICS`, `margin` >= 0."""
    if metric not in GATE_METRICS:
        raise GateError(f"golden set metric must be one of {', '.join(GATE_METRICS)}; got {metric!r}")
    if not margin >= 0:
        raise GateError(f"golden set margin must be >= 0, got {margin}")
    registry.versions(name)  # an unknown model name is a RegistryError naming the registered ones
    path = Path(annotations).resolve()
    if not path.is_file():
        raise GateError(f"golden set annotations not found: {path}")
    folder = Path(images).resolve()
    if not folder.is_dir():
        raise GateError(f"golden set images folder not found: {folder}")
    _read_golden(path, folder)
    golden = GoldenSet(str(path), str(folder), file_sha256(path), metric, float(margin))
    registry.set_golden_set(name, golden.to_dict())
    return golden


def evaluate_on_golden_set(
    entry: ModelVersion, checkpoint: Path, golden: GoldenSet, device: str = "cpu"
) -> GoldenScore:
    """Predict every golden image with version `entry` (weights at `checkpoint`) and score the result.

    Raises `GateError` naming the version and the image when the model cannot be loaded or fails on one.
    """
    # Imported here: torch and the model code load only when a version is evaluated.
    from instaseg.evaluation import evaluate
    from instaseg.inference import Predictor
    from instaseg.inference.postprocess import PostprocessOptions

    gt, images = golden.load()
    classes = {c["id"] for c in entry.classes}
    golden_categories = {c["id"] for c in gt.get("categories", [])}
    if not classes & golden_categories:
        raise GateError(
            f"{entry.name} v{entry.version}: its category ids {sorted(classes)} share none with the golden "
            f"set's {sorted(golden_categories)} ({golden.annotations})"
        )
    what = f"{entry.name} v{entry.version}"
    try:
        predictor = Predictor(
            checkpoint,
            device=device,
            postprocess=PostprocessOptions(score_threshold=GOLDEN_SCORE_THRESHOLD),
            categories=entry.classes,
        )
    except Exception as exc:
        raise GateError(f"{what} cannot be loaded for the quality gate: {type(exc).__name__}: {exc}") from exc
    results: list[dict] = []
    for image_id, path in images:
        try:
            instances = predictor.predict(path)
        except Exception as exc:
            raise GateError(
                f"{what} failed on golden image {path} (id {image_id}): {type(exc).__name__}: {exc}"
            ) from exc
        results += instances.to_coco_results(image_id)
    served = PostprocessOptions().resolved(predictor.model.operating_point).score_threshold
    chosen = {"mask_ap": ["ap"], "dsb": ["ap", "dsb"], "pq": ["ap", "pq"]}[golden.metric]
    report, computed = evaluate(
        gt,
        results,
        iou_type="segm",
        min_score=served,
        metrics=chosen,
        gt_source=golden.annotations,
        results_source=f"{what} on the golden set",
    )
    mask_ap = float(computed["segm"].stats["AP"])
    value = {
        "mask_ap": lambda: mask_ap,
        "dsb": lambda: float(report["pixel_metrics"]["dsb_score"]),
        "pq": lambda: float(report["panoptic"]["groups"]["All"]["PQ"] or 0.0),
    }[golden.metric]()
    return GoldenScore(entry.version, golden.metric, value, mask_ap, len(images), len(results))


def decide(
    name: str, golden: GoldenSet, candidate: GoldenScore, production: GoldenScore | None, force: bool
) -> GateDecision:
    """Pass unless the candidate scores more than `golden.margin` below production."""
    passed = production is None or candidate.value >= production.value - golden.margin
    return GateDecision(
        name=name,
        metric=golden.metric,
        margin=golden.margin,
        candidate=candidate,
        production=production,
        passed=passed,
        forced=force and not passed,
        golden_sha256=golden.sha256,
        decided_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )


def check_promotion(
    registry: ModelRegistry, name: str, version: int, force: bool = False, device: str = "cpu"
) -> GateDecision | None:
    """The gate for making `version` of `name` serve traffic (promotion or canary): None when the model has
    no golden set or `version` already is production; otherwise the decision, stored with the version.

    Raises `GateRefused` on a regression without `force` (a forced one is logged as a warning), and
    `GateError` when either version cannot be evaluated; the deployment is never changed here.
    """
    stored = registry.golden_set(name)
    deployment = registry.deployment(name)
    if stored is None or version == deployment.production:
        return None
    golden = GoldenSet.from_dict(stored)
    candidate_entry = registry.get(name, version)
    candidate = evaluate_on_golden_set(
        candidate_entry, registry.fetch_checkpoint(candidate_entry), golden, device
    )
    production = None
    if deployment.production is not None:
        entry = registry.get(name, deployment.production)
        production = evaluate_on_golden_set(entry, registry.fetch_checkpoint(entry), golden, device)
    decision = decide(name, golden, candidate, production, force)
    registry.record_quality_gate(name, version, decision.to_dict())
    if not decision.passed:
        if not force:
            raise GateRefused(decision)
        _log.warning("quality gate overridden with --force: %s", decision.message())
    return decision


def _read_golden(path: Path, folder: Path) -> tuple[dict, list[tuple[int, Path]]]:
    from instaseg.evaluation import check_ground_truth

    try:
        gt = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise GateError(f"golden set annotations {path}: not a readable JSON file: {exc}") from None
    try:
        check_ground_truth(gt, str(path), "segm")
    except ValueError as exc:
        raise GateError(f"golden set annotations {path}: {exc}") from None
    images = [(int(image["id"]), folder / image["file_name"]) for image in gt["images"]]
    missing = [f"id {i} {p}" for i, p in images if not p.is_file()]
    if missing:
        shown = "; ".join(missing[:5]) + (f"; and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise GateError(f"golden set {path}: {len(missing)} of {len(images)} images missing: {shown}")
    if not images:
        raise GateError(f"golden set {path} has no images")
    return gt, images
