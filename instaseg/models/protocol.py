"""The inference contract of every model family: `SegmentationModel`, `DetectOptions`, `OperatingPoint`.

`Predictor`, tiling, TTA, tracking, the service and export talk to a model only through this protocol, so a
new family (or another runtime of an existing one, as `OnnxMaskRCNN`) works everywhere by implementing it.

What `detect` returns, one `Instances` per image, in original-image pixels:
- `boxes (N, 4)` float32 x1y1x2y2, `scores (N,)`, `labels (N,)` int64 model classes 1..num_classes-1 (0 is
  background; `categories[k - 1]` is class k), `masks` (bitmaps at `MASK_THRESHOLD`), by decreasing score;
- optionally the field `mask_logits (N, M, M)`: each instance's mask logits inside its box (Mask R-CNN's
  28x28 head output). With it, masks can be re-pasted at another threshold and fused across TTA views.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from torch import Tensor

from instaseg.structures.instances import Instances

# The probability above which a pixel belongs to a model's own masks (torchvision's Mask R-CNN rule).
MASK_THRESHOLD = 0.5
# The score threshold a model file without an operating point gets: COCO evaluation's, which keeps AP intact.
EVALUATION_SCORE_THRESHOLD = 0.05


@dataclass(frozen=True)
class DetectOptions:
    """Per-call inference settings; None keeps the model's own (its config's) value. Passed as arguments,
    never set on the model, so two callers sharing one model cannot change each other's results.

    score_threshold: candidates scoring at or below it are dropped inside the model (before its NMS).
    iou_threshold: the IoU of the model's own non-maximum suppression.
    max_detections: at most this many instances per image.
    input_scale: the model resizes its input to `input_scale` times its usual size (scale TTA).
    """

    score_threshold: float | None = None
    iou_threshold: float | None = None
    max_detections: int | None = None
    input_scale: float = 1.0

    def __post_init__(self) -> None:
        for name in ("score_threshold", "iou_threshold"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value <= 1.0:
                raise ValueError(f"DetectOptions.{name} must lie in [0, 1], got {value}")
        if self.max_detections is not None and self.max_detections < 1:
            raise ValueError(f"DetectOptions.max_detections must be >= 1, got {self.max_detections}")
        if not self.input_scale > 0:
            raise ValueError(f"DetectOptions.input_scale must be > 0, got {self.input_scale}")


DEFAULT_DETECT_OPTIONS = DetectOptions()


@dataclass(frozen=True)
class OperatingPoint:
    """The thresholds recommended for counting and measuring with a model, chosen on its training images.

    `score_threshold` and `mask_threshold` are probabilities in [0, 1]; `chosen_on` says how they were
    chosen (a command or a sentence), so that a results file can cite it.
    """

    score_threshold: float
    mask_threshold: float = MASK_THRESHOLD
    chosen_on: str = ""

    def __post_init__(self) -> None:
        for name in ("score_threshold", "mask_threshold"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
                raise ValueError(f"operating point {name} must be a number in [0, 1], got {value!r}")

    def to_dict(self) -> dict[str, object]:
        return {
            "score_threshold": float(self.score_threshold),
            "mask_threshold": float(self.mask_threshold),
            "chosen_on": self.chosen_on,
        }

    @classmethod
    def from_dict(cls, data: object, source: str) -> OperatingPoint:
        """Parse `to_dict`'s output; `ValueError` names `source` and the field."""
        if not isinstance(data, dict) or "score_threshold" not in data:
            raise ValueError(
                f"{source}: operating_point must be a mapping with a score_threshold, got {data!r}"
            )
        unknown = sorted(set(data) - {"score_threshold", "mask_threshold", "chosen_on"})
        if unknown:
            raise ValueError(f"{source}: operating_point has unknown keys {unknown}")
        try:
            return cls(
                data["score_threshold"],
                data.get("mask_threshold", MASK_THRESHOLD),
                str(data.get("chosen_on", "")),
            )
        except ValueError as error:
            raise ValueError(f"{source}: {error}") from None


@runtime_checkable
class SegmentationModel(Protocol):
    """What inference needs from a model, whatever its family or runtime.

    `categories`: the dataset categories `[{"id": int, "name": str}]` behind model classes 1..K, in class
    order, or None (labels stay model classes). `operating_point`: recommended thresholds, or None.
    """

    categories: list[dict] | None
    operating_point: OperatingPoint | None

    @property
    def num_classes(self) -> int:
        """Number of classes including background (class 0)."""
        ...

    def summary(self) -> dict[str, object]:
        """Architecture facts for listings (the registry, `/v1/models`): at least `family`, `backbone`,
        `num_classes`, as plain JSON values."""
        ...

    def batch_key(self, image_size: tuple[int, int], options: DetectOptions) -> Hashable:
        """Images of `image_size (H, W)` with equal keys may share one `detect` call without changing each
        other's results (Mask R-CNN: the padded size of the resized image)."""
        ...

    def detect(
        self, images: Sequence[Tensor], options: DetectOptions = DEFAULT_DETECT_OPTIONS
    ) -> list[Instances]:
        """`(3, H, W)` float images in [0, 1] -> one `Instances` each (see the module docstring)."""
        ...
