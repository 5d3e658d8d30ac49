"""Semantic segmentation metrics: per-class IoU and Dice, mean IoU, pixel accuracy, from one confusion matrix.

Label maps are `(H, W)` integer arrays of class indices (what `instaseg predict --semantic` writes and what a
semantic label-map folder holds). Pixels whose ground truth is `ignore_index` (255 by default, the void label
of Cityscapes/ADE-style maps) count nowhere. The confusion matrix is accumulated over all images with one
`np.bincount` per image, so a data set of any size is one pass; metrics come from the summed matrix (the
standard "dataset-level" IoU, not a mean of per-image IoUs).

A class that appears neither in the ground truth nor in the predictions has no IoU (it is left out of the
mean); a class predicted but never present has IoU 0.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from instaseg.data.records import read_one_channel_png
from instaseg.io.images import natural_sort_key

IGNORE_INDEX = 255


class SemanticInputError(ValueError):
    """Label maps that cannot be compared: the message names the image and what is wrong."""


@dataclass
class SemanticConfusion:
    """Accumulates `counts[gt, pred]` over images; `num_classes` grows with the largest index seen."""

    ignore_index: int = IGNORE_INDEX
    counts: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), dtype=np.int64))

    def add(self, ground_truth: np.ndarray, prediction: np.ndarray, name: str = "image") -> None:
        """Add one image: `(H, W)` integer maps of the same size."""
        if ground_truth.shape != prediction.shape:
            raise SemanticInputError(
                f"{name}: prediction is {prediction.shape[1]}x{prediction.shape[0]} (WxH), ground truth "
                f"{ground_truth.shape[1]}x{ground_truth.shape[0]}"
            )
        for label, values in (("ground truth", ground_truth), ("prediction", prediction)):
            if not np.issubdtype(values.dtype, np.integer):
                raise SemanticInputError(
                    f"{name}: {label} must hold integer class indices, got {values.dtype}"
                )
            if values.size and int(values.min()) < 0:
                raise SemanticInputError(f"{name}: {label} has negative class index {int(values.min())}")
        valid = ground_truth != self.ignore_index
        gt = ground_truth[valid].astype(np.int64)
        pred = prediction[valid].astype(np.int64)
        if (pred == self.ignore_index).any():
            raise SemanticInputError(
                f"{name}: the prediction uses the ignore index {self.ignore_index} where the ground truth "
                "has a class; predictions must name a class for every pixel"
            )
        size = max(self.counts.shape[0], int(gt.max(initial=-1)) + 1, int(pred.max(initial=-1)) + 1)
        if size > self.counts.shape[0]:
            grown = np.zeros((size, size), dtype=np.int64)
            grown[: self.counts.shape[0], : self.counts.shape[1]] = self.counts
            self.counts = grown
        self.counts += np.bincount(gt * size + pred, minlength=size * size).reshape(size, size)

    def metrics(self) -> dict[str, object]:
        """`{"mean_iou", "pixel_accuracy", "mean_dice", "per_class": {index: {"iou", "dice", "gt_pixels",
        "predicted_pixels"}}}`; a class absent from both sides is not listed. Values are None when there is
        nothing to score."""
        counts = self.counts
        true_positive = np.diag(counts).astype(np.float64)
        gt_pixels = counts.sum(axis=1)
        predicted_pixels = counts.sum(axis=0)
        union = gt_pixels + predicted_pixels - true_positive
        present = union > 0
        per_class = {
            int(index): {
                "iou": float(true_positive[index] / union[index]),
                "dice": float(2 * true_positive[index] / (gt_pixels[index] + predicted_pixels[index])),
                "gt_pixels": int(gt_pixels[index]),
                "predicted_pixels": int(predicted_pixels[index]),
            }
            for index in np.flatnonzero(present)
        }
        total = counts.sum()
        return {
            "mean_iou": float(np.mean([c["iou"] for c in per_class.values()])) if per_class else None,
            "mean_dice": float(np.mean([c["dice"] for c in per_class.values()])) if per_class else None,
            "pixel_accuracy": float(true_positive.sum() / total) if total else None,
            "per_class": per_class,
        }


def semantic_metrics(
    pairs: Iterable[tuple[str, np.ndarray, np.ndarray]], ignore_index: int = IGNORE_INDEX
) -> dict[str, object]:
    """Metrics over `(name, ground truth, prediction)` label-map pairs (see `SemanticConfusion.metrics`)."""
    confusion = SemanticConfusion(ignore_index)
    count = 0
    for name, ground_truth, prediction in pairs:
        confusion.add(ground_truth, prediction, name)
        count += 1
    return {"num_images": count, **confusion.metrics()}


def evaluate_semantic_folders(
    gt_folder: str | Path, pred_folder: str | Path, ignore_index: int = IGNORE_INDEX
) -> dict[str, object]:
    """Compare two folders of label-map PNGs matched by file stem. Every ground-truth map needs its
    prediction and the reverse: a missing or extra file is an error naming it, not a silent skip."""
    gt_files = _png_files(Path(gt_folder))
    pred_files = _png_files(Path(pred_folder))
    missing = sorted(set(gt_files) - set(pred_files), key=natural_sort_key)
    extra = sorted(set(pred_files) - set(gt_files), key=natural_sort_key)
    if missing or extra:
        raise SemanticInputError(
            f"{pred_folder}: predictions missing for {missing[:5]} and without ground truth {extra[:5]} "
            f"({len(missing)} missing, {len(extra)} extra)"
        )
    return semantic_metrics(
        (
            (str(pred_files[stem]), read_class_map(gt_files[stem]), read_class_map(pred_files[stem]))
            for stem in sorted(gt_files, key=natural_sort_key)
        ),
        ignore_index,
    )


def read_class_map(path: Path) -> np.ndarray:
    """The `(H, W)` integer class-index map of a one-channel PNG (modes L, P, I;16, I)."""
    array, problem, _ = read_one_channel_png(path, "class map", "class indices need one channel")
    if problem is not None:
        raise SemanticInputError(f"{path}: {problem}")
    return array


def _png_files(folder: Path) -> dict[str, Path]:
    if not folder.is_dir():
        raise FileNotFoundError(f"label-map folder not found: {folder}")
    files = {path.stem: path for path in folder.iterdir() if path.suffix.lower() == ".png"}
    if not files:
        raise SemanticInputError(f"{folder}: no label-map PNG files")
    return files
