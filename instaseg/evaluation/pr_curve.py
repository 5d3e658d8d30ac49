"""Precision-recall curves from accumulated COCO arrays: data for the JSON report and a PNG plot."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from instaseg.evaluation.coco_eval import CocoMetrics
from instaseg.io.atomic import atomic_write


def _class_mean(precision: np.ndarray) -> list[float | None]:
    """(R, K) interpolated precision -> per recall threshold the mean over classes with ground truth."""
    curve = []
    for row in precision:
        defined = row[row > -1]
        curve.append(float(defined.mean()) if defined.size else None)
    return curve


def pr_curve_data(metrics: CocoMetrics) -> dict:
    """Class-averaged interpolated precision at each COCO recall threshold (area "all", `max_dets`).

    Returns `{"recall": [101 floats], "precision": {"0.50": [...], "0.75": [...], "0.50:0.95": [...]}}`;
    a precision entry is None where no class has ground truth.
    """
    m = metrics.max_dets_list.index(metrics.max_dets)
    precision = metrics.precision[:, :, :, 0, m]  # (T, R, K)
    t50 = int(np.flatnonzero(np.isclose(metrics.iou_thresholds, 0.5))[0])
    t75 = int(np.flatnonzero(np.isclose(metrics.iou_thresholds, 0.75))[0])
    # COCO marks a class without ground truth with -1 at every IoU threshold, so the mean over thresholds
    # keeps that marker and is a true mean everywhere else.
    over_thresholds = precision.mean(axis=0)
    return {
        "recall": [float(r) for r in metrics.recall_thresholds],
        "precision": {
            "0.50": _class_mean(precision[t50]),
            "0.75": _class_mean(precision[t75]),
            "0.50:0.95": _class_mean(over_thresholds),
        },
    }


def plot_pr_curve(metrics: CocoMetrics, path: str | Path, title: str | None = None) -> Path:
    """Draw `pr_curve_data(metrics)` as a PNG at `path` (written atomically); returns the path."""
    data = pr_curve_data(metrics)
    figure = Figure(figsize=(5.5, 4.5), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for label, curve in data["precision"].items():
        values = np.array([np.nan if v is None else v for v in curve])
        axes.plot(data["recall"], values, label=f"IoU {label}")
    axes.set_xlim(0, 1)
    axes.set_ylim(0, 1.02)
    axes.set_xlabel("recall")
    axes.set_ylabel("precision (interpolated)")
    axes.set_title(
        title or f"{metrics.iou_type}: AP {metrics.stats['AP']:.3f} (max {metrics.max_dets} dets/image)"
    )
    axes.grid(alpha=0.3)
    axes.legend(loc="lower left")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    path = Path(path)
    with atomic_write(path, "wb") as stream:
        stream.write(buffer.getvalue())
    return path
