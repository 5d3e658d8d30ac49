"""Input and output drift: reference statistics stored at registration, a rolling window while serving, and
the population stability index (PSI) between the two, per feature.

Features, each a histogram over fixed bins (fixed, not reference quantiles, so a reference where every image
has the same size still has a well-defined "different size" bin):

- `brightness`: mean luma (0.299 R + 0.587 G + 0.114 B) of the image, 16 bins over [0, 256);
- `contrast`: standard deviation of the luma, 16 bins over [0, 128);
- `size`: sqrt(height x width) in pixels, half-octave bins from 32 to 16384 (plus open ends);
- `colour`: the pixel-value histogram of R, G and B, 16 bins each, pooled over the images;
- `score`: the scores of the predicted instances, 10 bins over [0, 1].

PSI = sum over bins of (actual - expected) * ln(actual / expected), with proportions floored at 1e-4 so an
empty bin does not make it infinite. Usual reading: < 0.1 stable, 0.1-0.25 moderate shift, > 0.25 large shift.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["FEATURES", "DriftMonitor", "ImageStatistics", "ReferenceStats", "image_statistics", "psi"]

FEATURES = ("brightness", "contrast", "size", "colour", "score")
_EDGES: dict[str, np.ndarray] = {
    "brightness": np.linspace(0.0, 256.0, 17),
    "contrast": np.linspace(0.0, 128.0, 17),
    "size": np.concatenate(([0.0], 2.0 ** (np.arange(10, 29) / 2.0), [np.inf])),
    "colour": np.linspace(0.0, 256.0, 17),
    "score": np.linspace(0.0, 1.0, 11),
}
_SCALAR_FEATURES = ("brightness", "contrast", "size")
# Statistics are computed on a strided view whose longer side is at most this: cheap, and plenty for means.
_STATS_MAX_SIDE = 256
_PSI_FLOOR = 1e-4
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


@dataclass(frozen=True)
class ImageStatistics:
    """Per-image features: brightness, contrast (luma mean / std), size (sqrt of the pixel count) and the
    (3, 16) per-channel pixel-value histogram, as proportions."""

    brightness: float
    contrast: float
    size: float
    colour: np.ndarray


def image_statistics(image: np.ndarray) -> ImageStatistics:
    """Features of one (H, W, 3) uint8 RGB image."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image_statistics needs an (H, W, 3) uint8 image, got {image.shape} {image.dtype}")
    height, width = image.shape[:2]
    step = max(1, -(-max(height, width) // _STATS_MAX_SIDE))
    small = image[::step, ::step].reshape(-1, 3)
    luma = small.astype(np.float32) @ _LUMA
    colour = np.stack([np.histogram(small[:, c], bins=_EDGES["colour"])[0] for c in range(3)]).astype(
        np.float64
    )
    return ImageStatistics(
        brightness=float(luma.mean()),
        contrast=float(luma.std()),
        size=float(np.sqrt(height * width)),
        colour=colour / max(1, small.shape[0]),
    )


def psi(expected: np.ndarray, actual: np.ndarray) -> float:
    """Population stability index between two histograms (counts or proportions over the same bins)."""
    expected = _proportions(expected)
    actual = _proportions(actual)
    return float(np.sum((actual - expected) * np.log(actual / expected)))


def _proportions(counts: np.ndarray) -> np.ndarray:
    counts = np.asarray(counts, dtype=np.float64).ravel()
    total = counts.sum()
    proportions = counts / total if total > 0 else np.full_like(counts, 1.0 / counts.size)
    return np.maximum(proportions, _PSI_FLOOR)


def _histograms(stats: Sequence[ImageStatistics], scores: Iterable[float]) -> dict[str, np.ndarray]:
    """Feature -> histogram counts (colour: (3, 16) summed proportions) over a set of images."""
    histograms = {
        name: np.histogram(np.clip([getattr(s, name) for s in stats], 0.0, None), bins=_EDGES[name])[
            0
        ].astype(np.float64)
        for name in _SCALAR_FEATURES
    }
    histograms["colour"] = (
        np.sum([s.colour for s in stats], axis=0) if stats else np.zeros((3, _EDGES["colour"].size - 1))
    )
    score_values = np.clip(np.fromiter(scores, dtype=np.float64), 0.0, 1.0)
    histograms["score"] = np.histogram(score_values, bins=_EDGES["score"])[0].astype(np.float64)
    return histograms


@dataclass(frozen=True)
class ReferenceStats:
    """Histograms of a model's validation inputs and output scores, stored with the model version."""

    images: int
    histograms: dict[str, np.ndarray]

    @classmethod
    def from_images(cls, stats: Sequence[ImageStatistics], scores: Iterable[float]) -> ReferenceStats:
        if not stats:
            raise ValueError("reference statistics need at least one image")
        return cls(len(stats), _histograms(stats, scores))

    def to_dict(self) -> dict:
        return {
            "images": self.images,
            "features": {
                name: {
                    "edges": [None if np.isinf(e) else float(e) for e in _EDGES[name]],  # JSON has no inf
                    "counts": self.histograms[name].tolist(),
                }
                for name in FEATURES
            },
        }

    @classmethod
    def from_dict(cls, data: dict, source: str = "reference statistics") -> ReferenceStats:
        """Parse `to_dict` output; a `ValueError` names `source` and the feature that does not fit."""
        try:
            features = data["features"]
            histograms = {}
            for name in FEATURES:
                edges = np.asarray(
                    [np.inf if e is None else e for e in features[name]["edges"]], dtype=np.float64
                )
                if edges.shape != _EDGES[name].shape or not np.allclose(edges, _EDGES[name]):
                    raise ValueError(f"feature {name!r} was binned differently; re-register the model")
                counts = np.asarray(features[name]["counts"], dtype=np.float64)
                expected_shape = (3, edges.size - 1) if name == "colour" else (edges.size - 1,)
                if counts.shape != expected_shape:
                    raise ValueError(f"feature {name!r} has counts of shape {counts.shape}")
                histograms[name] = counts
            return cls(int(data["images"]), histograms)
        except (KeyError, TypeError) as exc:
            raise ValueError(f"{source}: malformed, missing {exc}") from None
        except ValueError as exc:
            raise ValueError(f"{source}: {exc}") from None


class DriftMonitor:
    """A rolling window of the last `window` served images (and their scores) compared with a reference.

    Thread-safe: request threads `add`, anyone reads `psi_scores`.
    """

    def __init__(self, reference: ReferenceStats, window: int = 500) -> None:
        if window < 1:
            raise ValueError(f"DriftMonitor window must be >= 1, got {window}")
        self.reference = reference
        self._window: deque[tuple[ImageStatistics, np.ndarray]] = deque(maxlen=window)
        self._added = 0
        self._lock = threading.Lock()

    def add(self, stats: ImageStatistics, scores: np.ndarray) -> int:
        """Record one served image; returns how many images were added so far (for refresh schedules)."""
        with self._lock:
            self._window.append((stats, np.asarray(scores, dtype=np.float64)))
            self._added += 1
            return self._added

    def __len__(self) -> int:
        with self._lock:
            return len(self._window)

    def psi_scores(self) -> dict[str, float]:
        """Feature -> PSI of the current window against the reference (scores: all instances' scores).

        A feature with no values on either side (e.g. no instance predicted in the window) is left out.
        """
        with self._lock:
            items = list(self._window)
        actual = _histograms([s for s, _ in items], (v for _, scores in items for v in scores))
        return {
            name: psi(self.reference.histograms[name], actual[name])
            for name in FEATURES
            if self.reference.histograms[name].sum() > 0 and actual[name].sum() > 0
        }
