"""Automatic mask generation ("segment everything") with SAM / MobileSAM.

A grid of single-point prompts over the image (and over overlapping crops with `crop_n_layers > 0`) is
decoded in batches; the three masks of every point are filtered by predicted IoU and by stability (the IoU of
the mask at logit thresholds +offset and -offset), masks touching a crop edge inside the image are dropped,
duplicates are removed by box NMS within each crop and across crops, and small islands and holes are cleaned
up on request. A model with a second stage (`Sam.refine_masks`, instaseg's promptable model) re-predicts
and rescores each upscaled mask, with its point, before the stability filter. The result is an `Instances`
(boxes x1y1x2y2 in original pixels, x2/y2 exclusive; RLE masks; `scores` = predicted IoU; fields
`stability_score`, `point_coords (N, 2)`, `crop_box (N, 4)` x1y1x2y2) and,
through `sam_records`, the official generator's list of records.

Two modes:
- `exact` makes the decisions of segment-anything's `SamAutomaticMaskGenerator` (same grids, crops, filters,
  NMS boxes and order), but does less work: predicted IoU is filtered before the decoder's upscaling (a
  point whose three masks all fail is never upscaled) and before any upsampling to the image, the padded part
  of the upsampling is never computed, bitmaps are kept as crops around their boxes, RLE is encoded only for
  the survivors of NMS, and nothing is deep-copied.
- `fast` decodes a coarse grid (half the points per side) first, then only the points of the full grid that
  no kept mask covers (the gaps), and finishes like `exact`. Fewer decoder calls where masks cover objects
  (a point inside an object gives that object's mask); a model whose masks are small blobs centred on each
  point (the seeded fixture weights) loses the masks of the skipped points.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from itertools import product
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
import torch
from torch import nn

from instaseg.io.images import ImageSource, load_image
from instaseg.models.protocol import DEFAULT_DETECT_OPTIONS, DetectOptions
from instaseg.models.sam import MASK_THRESHOLD, Sam
from instaseg.models.sam.common import stability_score
from instaseg.models.sam.predictor import SamPredictor
from instaseg.models.sam.transforms import postprocess_masks, scale_coords, to_rgb_array
from instaseg.ops import nms
from instaseg.structures.boxes import box_area
from instaseg.structures.instances import Instances
from instaseg.structures.mask_crops import MaskCrop, masks_from_crops
from instaseg.structures.masks import rle_area

__all__ = [
    "AutomaticMaskGenerator",
    "AutomaticMaskSettings",
    "SamEverythingModel",
    "build_point_grid",
    "crop_boxes",
    "sam_records",
    "uncovered_points",
]

Mode = Literal["exact", "fast"]
# Masks whose box lies within this many pixels of a crop edge (not an image edge) are dropped (official).
CROP_EDGE_TOLERANCE = 20.0
# Masks upsampled at once: bounds the (chunk, H, W) float logits in memory (4 x 1500 x 2000 x 4 B = 48 MB);
# 4 was ~5% faster than 16 on a 2-core VM (fewer fresh pages for the allocator to map).
UPSAMPLE_CHUNK = 4
SAM_LABEL = 1


@dataclass(frozen=True)
class AutomaticMaskSettings:
    """The official generator's arguments (same names, same defaults) and the `mode`."""

    points_per_side: int = 32
    points_per_batch: int = 64
    pred_iou_thresh: float = 0.88
    stability_score_thresh: float = 0.95
    stability_score_offset: float = 1.0
    box_nms_thresh: float = 0.7
    crop_n_layers: int = 0
    crop_nms_thresh: float = 0.7
    crop_overlap_ratio: float = 512 / 1500
    crop_n_points_downscale_factor: int = 1
    min_mask_region_area: int = 0
    mode: Mode = "exact"

    def __post_init__(self) -> None:
        for name in ("points_per_side", "points_per_batch", "crop_n_points_downscale_factor"):
            if getattr(self, name) < 1:
                raise ValueError(f"AutomaticMaskSettings.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("pred_iou_thresh", "stability_score_thresh", "box_nms_thresh", "crop_nms_thresh"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(
                    f"AutomaticMaskSettings.{name} must lie in [0, 1], got {getattr(self, name)}"
                )
        if self.crop_n_layers < 0 or self.min_mask_region_area < 0:
            raise ValueError("AutomaticMaskSettings: crop_n_layers and min_mask_region_area must be >= 0")
        if not 0.0 <= self.crop_overlap_ratio < 1.0:
            raise ValueError(
                f"AutomaticMaskSettings.crop_overlap_ratio must lie in [0, 1), got {self.crop_overlap_ratio}"
            )
        if self.mode not in ("exact", "fast"):
            raise ValueError(f"AutomaticMaskSettings.mode must be 'exact' or 'fast', got {self.mode!r}")


def build_point_grid(points_per_side: int) -> np.ndarray:
    """`(n^2, 2)` float64 (x, y) cell centres of an n x n grid over [0, 1]^2, row by row (y outer)."""
    offset = 1 / (2 * points_per_side)
    side = np.linspace(offset, 1 - offset, points_per_side)
    xs = np.tile(side[None, :], (points_per_side, 1))
    ys = np.tile(side[:, None], (1, points_per_side))
    return np.stack([xs, ys], axis=-1).reshape(-1, 2)


def crop_boxes(
    image_size: tuple[int, int], n_layers: int, overlap_ratio: float
) -> list[tuple[list[int], int]]:
    """`([x1, y1, x2, y2], layer)` of every crop: the whole image (layer 0), then per layer i >= 1 a
    2^i x 2^i set of crops overlapping by `overlap_ratio` of the short side (scaled down per layer), in the
    official order (x outer, y inner)."""
    height, width = image_size
    short_side = min(height, width)
    crops = [([0, 0, width, height], 0)]
    for layer in range(1, n_layers + 1):
        per_side = 2**layer
        overlap = int(overlap_ratio * short_side * (2 / per_side))
        crop_w = int(math.ceil((overlap * (per_side - 1) + width) / per_side))
        crop_h = int(math.ceil((overlap * (per_side - 1) + height) / per_side))
        x0s = [int((crop_w - overlap) * i) for i in range(per_side)]
        y0s = [int((crop_h - overlap) * i) for i in range(per_side)]
        for x0, y0 in product(x0s, y0s):
            crops.append(([x0, y0, min(x0 + crop_w, width), min(y0 + crop_h, height)], layer))
    return crops


@dataclass
class _Candidates:
    """Masks that passed the filters: `boxes (K, 4)` float32 x1y1x2y2 *inclusive* of the last pixel (what the
    official NMS compares), `crops` (bitmaps around those boxes, image coordinates), scores, points, crops."""

    boxes: torch.Tensor
    iou: torch.Tensor
    stability: torch.Tensor
    points: torch.Tensor
    crop_box: torch.Tensor
    crops: list[MaskCrop]

    @staticmethod
    def empty() -> _Candidates:
        return _Candidates(
            torch.zeros(0, 4),
            torch.zeros(0),
            torch.zeros(0),
            torch.zeros(0, 2, dtype=torch.float64),
            torch.zeros(0, 4),
            [],
        )

    @staticmethod
    def cat(parts: list[_Candidates]) -> _Candidates:
        if not parts:
            return _Candidates.empty()
        return _Candidates(
            torch.cat([p.boxes for p in parts]),
            torch.cat([p.iou for p in parts]),
            torch.cat([p.stability for p in parts]),
            torch.cat([p.points for p in parts]),
            torch.cat([p.crop_box for p in parts]),
            [crop for p in parts for crop in p.crops],
        )

    def take(self, keep: torch.Tensor) -> _Candidates:
        index = keep.tolist()
        return _Candidates(
            self.boxes[keep],
            self.iou[keep],
            self.stability[keep],
            self.points[keep],
            self.crop_box[keep],
            [self.crops[i] for i in index],
        )


class AutomaticMaskGenerator:
    """Segment everything in an image with a SAM model (`Sam`, a `SamPredictor` or a checkpoint path)."""

    def __init__(
        self, model: Sam | SamPredictor | str | Path, settings: AutomaticMaskSettings | None = None
    ) -> None:
        self.predictor = model if isinstance(model, SamPredictor) else SamPredictor(model)
        self.settings = settings or AutomaticMaskSettings()

    @torch.no_grad()
    def generate(self, image: ImageSource) -> Instances:
        """All masks of `image` (path, PIL image or array) as `Instances` (see the module docstring)."""
        rgb = load_image(image)
        size = (rgb.shape[0], rgb.shape[1])
        settings = self.settings
        crops = crop_boxes(size, settings.crop_n_layers, settings.crop_overlap_ratio)
        found = _Candidates.cat([self._process_crop(rgb, box, layer) for box, layer in crops])
        if len(crops) > 1 and len(found.crops):
            # Prefer masks from smaller crops: score 1 / crop area (ties keep the concatenation order).
            keep = nms(found.boxes, 1.0 / box_area(found.crop_box), settings.crop_nms_thresh)
            found = found.take(keep)
        if settings.min_mask_region_area > 0 and len(found.crops):
            threshold = max(settings.box_nms_thresh, settings.crop_nms_thresh)
            found = _remove_small_regions(found, size, settings.min_mask_region_area, threshold)
        boxes = found.boxes.clone()
        nonempty = boxes[:, 2] >= boxes[:, 0]
        boxes[:, 2:] += nonempty[:, None].float()  # inclusive last pixel -> exclusive x2 / y2
        return Instances(
            size,
            boxes,
            torch.full((len(found.crops),), SAM_LABEL, dtype=torch.int64),
            found.iou,
            masks_from_crops(found.crops, size, dense=False),
            stability_score=found.stability,
            point_coords=found.points,
            crop_box=found.crop_box,
        )

    def _process_crop(self, image: np.ndarray, box: list[int], layer: int) -> _Candidates:
        x0, y0, x1, y1 = box
        settings = self.settings
        crop = image[y0:y1, x0:x1]
        crop_size = (crop.shape[0], crop.shape[1])
        self.predictor.set_image(np.ascontiguousarray(crop))
        per_side = int(settings.points_per_side / settings.crop_n_points_downscale_factor**layer)
        scale = np.array([crop_size[1], crop_size[0]], dtype=np.float64)
        context = (box, crop_size, self.predictor.input_size, size_of(image))
        if settings.mode == "exact":
            parts = self._decode_points(build_point_grid(per_side) * scale, context)
        else:
            coarse = max(per_side // 2, 1)
            parts = self._decode_points(build_point_grid(coarse) * scale, context)
            fine = build_point_grid(per_side) * scale
            gaps = uncovered_points(fine, _Candidates.cat(parts).crops, box, crop_size)
            parts += self._decode_points(gaps, context)
        found = _Candidates.cat(parts)
        if len(found.crops):
            found = found.take(nms(found.boxes, found.iou, settings.box_nms_thresh))
        return found

    def _decode_points(self, points: np.ndarray, context: tuple) -> list[_Candidates]:
        """Crop-pixel points `(P, 2)` float64 -> the filtered candidates of each batch."""
        parts = []
        batch = self.settings.points_per_batch
        for start in range(0, len(points), batch):
            parts.append(self._decode_batch(points[start : start + batch], context))
        return parts

    def _decode_batch(self, points: np.ndarray, context: tuple) -> _Candidates:
        box, crop_size, input_size, image_size = context
        settings = self.settings
        model = self.predictor.model
        coords = scale_coords(torch.from_numpy(points), crop_size, model.image_size)[:, None]
        labels = torch.ones(len(points), 1, dtype=torch.int64)

        def passing(iou: torch.Tensor) -> torch.Tensor:
            """`(b, 4)` predicted IoU -> `(b, 3)`: which multimask outputs (1..3) pass the IoU filter."""
            return _passing(iou[:, 1:], settings.pred_iou_thresh, strict=True)

        # Only points with a mask above the IoU threshold are upscaled (the official code upscales all).
        iou, drawn, low_res = model.decode_where(
            self.predictor.embedding, (coords, labels), draw=lambda group: passing(group).any(dim=1)
        )
        passes = passing(iou)
        iou, low_res = iou[:, 1:], low_res[:, 1:]
        if len(drawn) == 0:
            return _Candidates.empty()
        position = torch.full((len(points),), -1, dtype=torch.int64)
        position[drawn] = torch.arange(len(drawn))
        candidate_point, candidate_mask = torch.nonzero(passes, as_tuple=True)  # point-major, as officially
        low_res = low_res[position[candidate_point], candidate_mask]
        iou = iou[candidate_point, candidate_mask]
        point_coords = torch.from_numpy(points)[candidate_point]
        index = torch.arange(len(candidate_point))
        x0, y0 = box[0], box[1]
        kept_boxes, kept_iou, kept_stability, kept_points, crops = [], [], [], [], []
        for start in range(0, len(index), UPSAMPLE_CHUNK):
            chunk = index[start : start + UPSAMPLE_CHUNK]
            logits = postprocess_masks(low_res[chunk][None], input_size, crop_size, model.image_size)[0]
            clicks = (point_coords[chunk][:, None].float(), torch.ones(len(chunk), 1, dtype=torch.int64))
            refined, chunk_iou = model.refine_masks(
                self.predictor.detail, logits[:, None], iou[chunk][:, None], None, clicks
            )
            logits, chunk_iou = refined[:, 0], chunk_iou[:, 0]
            stability = stability_score(logits, settings.stability_score_offset)
            passed = _passing(stability, settings.stability_score_thresh, strict=False)
            masks = logits[passed] > MASK_THRESHOLD
            boxes = _inclusive_boxes(masks)
            near_edge = _near_crop_edge(boxes, box, image_size)
            masks, boxes = masks[~near_edge], boxes[~near_edge]
            selected = chunk[passed][~near_edge]
            for mask, (bx1, by1, bx2, by2) in zip(masks.numpy(), boxes.int().tolist(), strict=True):
                crops.append(MaskCrop(y0 + by1, x0 + bx1, mask[by1 : by2 + 1, bx1 : bx2 + 1].copy()))
            kept_boxes.append(boxes + torch.tensor([x0, y0, x0, y0], dtype=torch.float32))
            kept_iou.append(chunk_iou[passed][~near_edge])
            kept_stability.append(stability[passed][~near_edge])
            kept_points.append(point_coords[selected] + torch.tensor([x0, y0], dtype=torch.float64))
        count = sum(len(b) for b in kept_boxes)
        return _Candidates(
            torch.cat(kept_boxes),
            torch.cat(kept_iou),
            torch.cat(kept_stability),
            torch.cat(kept_points),
            torch.tensor([box], dtype=torch.float32).expand(count, 4).clone(),
            crops,
        )


def _passing(scores: torch.Tensor, threshold: float, strict: bool) -> torch.Tensor:
    """The official filters: predicted IoU `> threshold`, stability `>= threshold`; a 0 threshold is off."""
    if threshold <= 0:
        return torch.ones_like(scores, dtype=torch.bool)
    return scores > threshold if strict else scores >= threshold


class SamEverythingModel(nn.Module):
    """Automatic mask generation behind the `SegmentationModel` protocol (`instaseg.models.protocol`), so that
    `load_model`, `Predictor`, `instaseg predict` and the service can run a SAM checkpoint: `detect` segments
    everything in each image. One class, 1 = "object"; scores are predicted IoUs, by decreasing score.

    `DetectOptions`: `score_threshold` drops masks whose predicted IoU is at or below it (after the
    generator's own `pred_iou_thresh`), `iou_threshold` replaces `box_nms_thresh`, `max_detections` keeps the
    best; `input_scale` other than 1 is refused (SAM's input is always 1024 pixels on the long side).
    """

    operating_point = None

    def __init__(
        self, model: Sam | SamPredictor | str | Path, settings: AutomaticMaskSettings | None = None
    ) -> None:
        super().__init__()
        self.generator = AutomaticMaskGenerator(model, settings)
        # A registered submodule: `.to(device)` and `.eval()` (Predictor calls them) reach the network.
        self.sam = self.generator.predictor.model
        self.categories: list[dict] | None = [{"id": 1, "name": "object"}]

    @property
    def num_classes(self) -> int:
        return 2

    def summary(self) -> dict[str, object]:
        return {
            "family": "sam",
            "backbone": self.generator.predictor.model.arch,
            "num_classes": self.num_classes,
            "mode": self.generator.settings.mode,
        }

    def batch_key(self, image_size: tuple[int, int], options: DetectOptions) -> Hashable:
        # Each image is embedded and decoded on its own, so any images may share a call.
        return "sam"

    def detect(
        self, images: Sequence[torch.Tensor], options: DetectOptions = DEFAULT_DETECT_OPTIONS
    ) -> list[Instances]:
        """`(3, H, W)` float images in [0, 1] -> one `Instances` each (masks as RLE)."""
        if options.input_scale != 1.0:
            raise ValueError(
                f"SAM: DetectOptions.input_scale must be 1 (fixed input size), got {options.input_scale}"
            )
        generator = self.generator
        if options.iou_threshold is not None:
            settings = dataclasses.replace(generator.settings, box_nms_thresh=options.iou_threshold)
            generator = AutomaticMaskGenerator(generator.predictor, settings)
        results = []
        for index, image in enumerate(images):
            if not isinstance(image, torch.Tensor) or image.ndim != 3 or image.shape[0] != 3:
                raise ValueError(f"SAM detect: image {index} must be a (3, H, W) tensor")
            rgb = to_rgb_array(image)
            found = generator.generate(rgb)
            if options.score_threshold is not None:
                found = found[found.scores > options.score_threshold]
            order = torch.argsort(found.scores, descending=True, stable=True)[: options.max_detections]
            results.append(found[order])
        return results


def size_of(image: np.ndarray) -> tuple[int, int]:
    return image.shape[0], image.shape[1]


def _inclusive_boxes(masks: torch.Tensor) -> torch.Tensor:
    """`(K, h, w)` bool -> `(K, 4)` float32 x1y1x2y2 with x2/y2 the last foreground pixel; zeros if empty
    (the official `batched_mask_to_box`, which its NMS and records use)."""
    count, height, width = masks.shape
    if count == 0:
        return torch.zeros(0, 4)
    rows, cols = masks.any(dim=2), masks.any(dim=1)
    row_index, col_index = torch.arange(height), torch.arange(width)
    boxes = torch.stack(
        [
            torch.where(cols, col_index, width).amin(dim=1),
            torch.where(rows, row_index, height).amin(dim=1),
            torch.where(cols, col_index, -1).amax(dim=1),
            torch.where(rows, row_index, -1).amax(dim=1),
        ],
        dim=1,
    ).float()
    return torch.where(rows.any(dim=1)[:, None], boxes, torch.zeros_like(boxes))


def _near_crop_edge(boxes: torch.Tensor, crop: list[int], image_size: tuple[int, int]) -> torch.Tensor:
    """`(K,)` bool: a box side within `CROP_EDGE_TOLERANCE` of the crop's side, unless that is the image's."""
    x0, y0 = crop[0], crop[1]
    image_boxes = boxes + torch.tensor([x0, y0, x0, y0], dtype=boxes.dtype)
    crop_box = torch.tensor(crop, dtype=torch.float32)
    image_box = torch.tensor([0, 0, image_size[1], image_size[0]], dtype=torch.float32)
    near_crop = torch.isclose(image_boxes, crop_box[None], atol=CROP_EDGE_TOLERANCE, rtol=0)
    near_image = torch.isclose(image_boxes, image_box[None], atol=CROP_EDGE_TOLERANCE, rtol=0)
    return (near_crop & ~near_image).any(dim=1)


def uncovered_points(
    points: np.ndarray, masks: list[MaskCrop], crop: list[int], crop_size: tuple[int, int]
) -> np.ndarray:
    """The crop-pixel points `(P, 2)` (x, y) whose pixel no mask covers (`masks` in image coordinates)."""
    covered = np.zeros(crop_size, dtype=bool)
    for mask in masks:
        y0, x0 = mask.y0 - crop[1], mask.x0 - crop[0]
        covered[y0 : y0 + mask.bitmap.shape[0], x0 : x0 + mask.bitmap.shape[1]] |= mask.bitmap
    columns = np.minimum(points[:, 0].astype(int), crop_size[1] - 1)
    rows = np.minimum(points[:, 1].astype(int), crop_size[0] - 1)
    return points[~covered[rows, columns]]


def _clean_regions(bitmap: np.ndarray, min_area: int) -> tuple[np.ndarray, bool]:
    """Fill holes, then remove islands, smaller than `min_area` pixels (8-connected); (mask, changed)."""
    changed = False
    for fill_holes in (True, False):
        working = (bitmap ^ fill_holes).astype(np.uint8)
        count, regions, stats, _ = cv2.connectedComponentsWithStats(working, connectivity=8)
        sizes = stats[1:, cv2.CC_STAT_AREA]
        small = [i + 1 for i, area in enumerate(sizes) if area < min_area]
        if not small:
            continue
        changed = True
        if fill_holes:
            bitmap = np.isin(regions, [0, *small])
        else:
            large = [i for i in range(1, count) if i not in small]
            bitmap = np.isin(regions, large or [int(np.argmax(sizes)) + 1])
    return bitmap, changed


def _remove_small_regions(
    found: _Candidates, image_size: tuple[int, int], min_area: int, nms_threshold: float
) -> _Candidates:
    """The official clean-up: clean each mask, prefer unchanged masks in a new NMS, keep cleaned boxes.

    Components are found on the whole image, as officially: whether a background region is a hole depends on
    the image border, which a crop around the mask does not show.
    """
    canvas = np.zeros(image_size, dtype=bool)
    crops, boxes, scores = [], found.boxes.clone(), []
    for i, crop in enumerate(found.crops):
        canvas[crop.window()] = crop.bitmap
        cleaned, changed = _clean_regions(canvas, min_area)
        canvas[crop.window()] = False
        if changed:
            crop = MaskCrop(0, 0, cleaned).tightened()
            height, width = crop.bitmap.shape
            boxes[i] = (
                torch.tensor([crop.x0, crop.y0, crop.x0 + width - 1, crop.y0 + height - 1]) if height else 0
            )
        crops.append(crop)
        scores.append(0.0 if changed else 1.0)
    keep = nms(boxes, torch.tensor(scores), nms_threshold)
    return _Candidates(boxes, found.iou, found.stability, found.points, found.crop_box, crops).take(keep)


def sam_records(instances: Instances) -> list[dict]:
    """The official generator's `coco_rle` records of `generate`'s output, in its order: `segmentation`
    (COCO RLE), `area`, `bbox` [x, y, w, h] with w = last column - first column (the official convention),
    `predicted_iou`, `point_coords` [[x, y]], `stability_score`, `crop_box` [x, y, w, h]."""
    rles = instances.masks.rles()
    areas = rle_area(rles)
    records = []
    for i, rle in enumerate(rles):
        x1, y1, x2, y2 = instances.boxes[i].tolist()
        if x2 > x1:
            x2, y2 = x2 - 1, y2 - 1
        cx1, cy1, cx2, cy2 = instances.fields["crop_box"][i].tolist()
        records.append(
            {
                "segmentation": rle,
                "area": int(areas[i]),
                "bbox": [x1, y1, x2 - x1, y2 - y1],
                "predicted_iou": float(instances.scores[i]),
                "point_coords": [instances.fields["point_coords"][i].tolist()],
                "stability_score": float(instances.fields["stability_score"][i]),
                "crop_box": [cx1, cy1, cx2 - cx1, cy2 - cy1],
            }
        )
    return records
