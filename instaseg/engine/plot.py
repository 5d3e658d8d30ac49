"""Training curves from a run's `metrics.jsonl`: losses, learning rate and validation AP, as PNG files."""

from __future__ import annotations

import io
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from instaseg.engine.metrics_log import read_metrics
from instaseg.io.atomic import atomic_write

AP_KEYS = ("segm_AP", "segm_AP50", "bbox_AP", "bbox_AP50")


def plot_metrics(run_dir: str | Path, out_dir: str | Path | None = None) -> list[Path]:
    """Draw `loss.png` (total and per-loss curves, learning rate) and, when the run was evaluated, `ap.png`.

    Reads `run_dir/metrics.jsonl`; writes into `out_dir` (default: `run_dir`), atomically. Returns the paths.
    """
    run_dir = Path(run_dir)
    metrics_path = run_dir / "metrics.jsonl"
    if not metrics_path.is_file():
        raise FileNotFoundError(f"{metrics_path} does not exist (is {run_dir} a training run folder?)")
    records = read_metrics(metrics_path)
    train_records = [r for r in records if r.get("kind") == "train"]
    eval_records = [r for r in records if r.get("kind") == "eval"]
    if not train_records:
        raise ValueError(f"{metrics_path} has no training records to plot")
    out_dir = Path(out_dir) if out_dir is not None else run_dir
    if not out_dir.is_dir():
        raise FileNotFoundError(f"output folder does not exist: {out_dir}")
    written = [_plot_losses(train_records, out_dir / "loss.png", run_dir.name)]
    if eval_records:
        written.append(_plot_ap(eval_records, out_dir / "ap.png", run_dir.name))
    return written


def _plot_losses(records: list[dict], path: Path, title: str) -> Path:
    figure = Figure(figsize=(10, 4.5), dpi=100)
    FigureCanvasAgg(figure)
    losses, rates = figure.subplots(1, 2, gridspec_kw={"width_ratios": [2, 1]})
    iterations = [r["iteration"] for r in records]
    loss_keys = sorted({key for record in records for key in record if key.startswith("loss_")})
    for key in ("loss", *loss_keys):
        values = [_value(r.get(key)) for r in records]
        losses.plot(iterations, values, label=key, linewidth=2.0 if key == "loss" else 1.0)
    losses.set_yscale("log")
    losses.set_xlabel("iteration")
    losses.set_ylabel("loss (log scale)")
    losses.set_title(f"{title}: training losses")
    losses.grid(alpha=0.3)
    losses.legend(fontsize="small")
    rates.plot(iterations, [_value(r.get("lr")) for r in records], color="tab:gray")
    rates.set_xlabel("iteration")
    rates.set_ylabel("learning rate")
    rates.grid(alpha=0.3)
    figure.tight_layout()
    return _save(figure, path)


def _plot_ap(records: list[dict], path: Path, title: str) -> Path:
    figure = Figure(figsize=(6, 4.5), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    iterations = [r["iteration"] for r in records]
    for key in AP_KEYS:
        values = [_value(r.get(key)) for r in records]
        axes.plot(iterations, values, marker="o", label=key)
    axes.set_ylim(0, 1)
    axes.set_xlabel("iteration")
    axes.set_ylabel("COCO AP (validation)")
    axes.set_title(f"{title}: validation AP")
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small")
    figure.tight_layout()
    return _save(figure, path)


def _value(value: float | None) -> float:
    """Missing or undefined (null, COCO's -1) values become NaN: a gap in the curve, not a fake zero."""
    return float("nan") if value is None or value < 0 else float(value)


def _save(figure: Figure, path: Path) -> Path:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    with atomic_write(path, "wb") as stream:
        stream.write(buffer.getvalue())
    return path
