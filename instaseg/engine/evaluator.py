"""Validation during training: predict the validation images (split over the processes), score with COCO AP
and Panoptic Quality.

The scoring itself is `instaseg.evaluation.evaluate_coco` (and the report's PQ of the instance sets, made
non-overlapping, detections scoring >= `PQ_MIN_SCORE`), against the validation set written once as COCO
JSON by `instaseg.data.coco.write_coco` (`val_ground_truth.json` in the run folder), so training reports
exactly what `instaseg eval` would report on that file.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from instaseg.data.coco import write_coco
from instaseg.data.records import Dataset
from instaseg.data.torch_dataset import CategoryMap
from instaseg.engine.distributed import DistributedContext, all_gather_objects
from instaseg.evaluation import evaluate_coco
from instaseg.evaluation.report import evaluate
from instaseg.evaluation.validation import read_json
from instaseg.io.images import load_image, to_tensor

# Summary numbers copied into the metrics log, per IoU type ("segm" for masks, "bbox" for boxes).
LOGGED_STATS = ("AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large", "AR_max")
# PQ counts every kept segment, so it needs a score cut: detectron2's instance threshold for panoptic output.
PQ_MIN_SCORE = 0.5


class Evaluator:
    """Scores a model on a validation `Dataset`; `ground_truth_path` is where its COCO JSON is written."""

    best_metric = "segm_AP"  # the metric of `score` that picks best.pt

    def __init__(
        self,
        dataset: Dataset,
        categories: CategoryMap,
        ground_truth_path: Path,
        max_detections: int,
        context: DistributedContext,
    ):
        if not dataset.images:
            raise ValueError(f"the validation dataset under {dataset.root} has no images")
        if not any(image.annotations for image in dataset.images):  # found now, not after training
            raise ValueError(
                f"the validation dataset under {dataset.root} has no annotations: AP would be undefined"
            )
        self.dataset = dataset
        self.categories = categories
        self.ground_truth_path = ground_truth_path
        self.max_detections = max_detections
        self.context = context
        self._ground_truth: dict | None = None

    @torch.no_grad()
    def predict(self, model: nn.Module) -> list[dict]:
        """COCO result records (dataset category ids) for every validation image, gathered on every process.

        Runs in float32 even when training uses bf16 autocast, so the scores do not depend on that choice.
        """
        was_training = model.training
        model.eval()
        results: list[dict] = []
        try:
            for record in self.dataset.images[self.context.rank :: self.context.world_size]:
                image = to_tensor(load_image(self.dataset.image_path(record))).to(self.context.device)
                (instances,) = model([image])
                instances = instances.replace(labels=self.categories.to_dataset(instances.labels))
                results.extend(instances.to("cpu").to_coco_results(record.id))
        finally:
            model.train(was_training)
        return [result for part in all_gather_objects(results, self.context) for result in part]

    def score(self, results: list[dict]) -> dict[str, float]:
        """`segm_AP`, `bbox_AP`, ... (see `LOGGED_STATS`); -1 where COCO leaves a number undefined."""
        metrics: dict[str, float] = {}
        for iou_type in ("segm", "bbox"):
            coco = evaluate_coco(
                self.ground_truth(),
                results,
                iou_type,
                self.max_detections,
                allow_empty_results=True,
                gt_source=str(self.ground_truth_path),
                results_source="validation predictions",
            )
            metrics.update({f"{iou_type}_{name}": float(coco.stats[name]) for name in LOGGED_STATS})
        metrics.update(self._panoptic_quality(results))
        return metrics

    def _panoptic_quality(self, results: list[dict]) -> dict[str, float]:
        """`pq_PQ`, `pq_SQ`, `pq_RQ` over all classes, `pq_things_*` over the things and `pq_stuff_*` over the
        stuff categories (`isthing: 0`); -1 where no class counts (e.g. nothing predicted, or no stuff)."""
        groups: dict[str, dict] = {}
        if results:
            report, _ = evaluate(
                self.ground_truth(),
                results,
                max_dets=self.max_detections,
                min_score=PQ_MIN_SCORE,
                metrics=["pq"],
                gt_source=str(self.ground_truth_path),
                results_source="validation predictions",
            )
            groups = report["panoptic"]["groups"]
        metrics = {}
        for group, prefix in (("All", "pq"), ("Things", "pq_things"), ("Stuff", "pq_stuff")):
            for name in ("PQ", "SQ", "RQ"):
                value = groups.get(group, {}).get(name)
                metrics[f"{prefix}_{name}"] = -1.0 if value is None else float(value)
        return metrics

    def ground_truth(self) -> dict:
        if self._ground_truth is None:
            write_coco(self.dataset, self.ground_truth_path)
            self._ground_truth = read_json(self.ground_truth_path, "validation ground-truth")
        return self._ground_truth
