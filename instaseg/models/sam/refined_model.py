"""A detector whose masks are redrawn by SAM from its boxes, behind the `SegmentationModel` protocol.

`SamRefinedModel(detector, sam)` runs any model of the contract (Mask R-CNN, CondInst, an ONNX file), then
gives every detected box to SAM as a prompt (one batched decoder call per image, `SamPredictor.refine`).
Boxes, labels and scores stay the detector's, so counting, AP ranking and tracking see the same instances;
only the masks change. As a `SegmentationModel` it works in `Predictor`, tiling, TTA, `instaseg predict
--refine-with` and the service unchanged.

Modes:
- `replace`: every mask is SAM's.
- `fuse`: SAM's mask where it agrees with the detector's (mask IoU >= `min_agreement`), the detector's
  elsewhere: a box prompt can latch onto a neighbour or the background, and the detector's own mask is the
  better answer then. The field `sam_refined (N,)` bool says which instances got SAM's mask.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import torch
from torch import nn

from instaseg.models.protocol import (
    DEFAULT_DETECT_OPTIONS,
    DetectOptions,
    OperatingPoint,
    SegmentationModel,
)
from instaseg.models.sam.onnx_sam import OnnxSam
from instaseg.models.sam.predictor import SamPredictor
from instaseg.models.sam.sam import Sam
from instaseg.models.sam.transforms import to_rgb_array
from instaseg.structures.instances import Instances
from instaseg.structures.masks import Masks, mask_iou

__all__ = ["REFINE_MODES", "SamRefinedModel"]

REFINE_MODES = ("replace", "fuse")


class SamRefinedModel(nn.Module):
    """`detector`'s instances with masks from `sam` (see the module docstring)."""

    def __init__(
        self,
        detector: SegmentationModel,
        sam: Sam | OnnxSam,
        mode: str = "replace",
        min_agreement: float = 0.5,
        batch_size: int = 64,
    ) -> None:
        super().__init__()
        if mode not in REFINE_MODES:
            raise ValueError(f"refine mode must be one of {', '.join(REFINE_MODES)}, got {mode!r}")
        if not 0.0 <= min_agreement <= 1.0:
            raise ValueError(f"min_agreement must lie in [0, 1], got {min_agreement}")
        if not isinstance(detector, nn.Module):
            raise TypeError(f"detector must be a torch module (a SegmentationModel), got {type(detector)}")
        # Registered submodules: `.to(device)` and `.eval()` (Predictor calls them) reach both networks.
        self.detector = detector
        self.sam = sam
        self.mode = mode
        self.min_agreement = min_agreement
        self.batch_size = batch_size

    @property
    def categories(self) -> list[dict] | None:
        return self.detector.categories

    @property
    def operating_point(self) -> OperatingPoint | None:
        return self.detector.operating_point

    @property
    def num_classes(self) -> int:
        return self.detector.num_classes

    def summary(self) -> dict[str, object]:
        return {**self.detector.summary(), "refiner": f"sam_{self.sam.arch}", "refine_mode": self.mode}

    def batch_key(self, image_size: tuple[int, int], options: DetectOptions) -> Hashable:
        return self.detector.batch_key(image_size, options)

    @torch.no_grad()
    def detect(
        self, images: Sequence[torch.Tensor], options: DetectOptions = DEFAULT_DETECT_OPTIONS
    ) -> list[Instances]:
        """`(3, H, W)` float images in [0, 1] -> the detector's `Instances`, masks redrawn by SAM."""
        detections = self.detector.detect(images, options)
        # An OnnxSam (an exported SAM) runs on ONNX Runtime's CPU; a Sam where its weights are.
        device = next(self.sam.parameters()).device if isinstance(self.sam, Sam) else torch.device("cpu")
        predictor = SamPredictor(self.sam, device=device, batch_size=self.batch_size)
        refined = []
        for image, found in zip(images, detections, strict=True):
            rgb = to_rgb_array(image)
            predictor.set_image(rgb)
            redrawn = predictor.refine(found)
            refined.append(self._fuse(found, redrawn) if self.mode == "fuse" else redrawn)
        return refined

    def _fuse(self, detected: Instances, redrawn: Instances) -> Instances:
        """SAM's mask where its IoU with the detector's mask reaches `min_agreement`, else the detector's."""
        if len(detected) == 0:
            return redrawn.replace(sam_refined=torch.zeros(0, dtype=torch.bool, device=detected.device))
        detector_rles, sam_rles = detected.masks.rles(), redrawn.masks.rles()
        pairs = list(zip(sam_rles, detector_rles, strict=True))
        agreement = torch.tensor([float(mask_iou([ours], [theirs], [False])[0, 0]) for ours, theirs in pairs])
        take_sam = agreement >= self.min_agreement
        chosen = zip(pairs, take_sam.tolist(), strict=True)
        rles = [ours if keep else theirs for (ours, theirs), keep in chosen]
        return redrawn.replace(
            masks=Masks.from_rles(rles, detected.image_size),
            sam_refined=take_sam.to(detected.device),
        )
