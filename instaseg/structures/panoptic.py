"""`PanopticSegmentation`: every pixel of one image given to at most one segment (a thing instance or a stuff
region), in the form the COCO panoptic format stores.

`segment_ids (H, W)` int32 holds each pixel's segment id, 0 where no segment claims it (void / unlabelled);
`segments` lists each id's `category_id`, `isthing`, `area`, `bbox` (COCO `[x, y, w, h]`, pixel corners),
`iscrowd` and, for predictions, `score`. A COCO panoptic PNG encodes id = R + 256 G + 256^2 B
(`to_rgb` / `from_rgb`), its JSON `segments_info` the segment list (`segments_info`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# Ids up to 256^3 - 1 fit the three 8-bit channels of a COCO panoptic PNG.
MAX_SEGMENT_ID = 256**3 - 1


@dataclass
class Segment:
    """One segment: its id in `segment_ids`, its category, whether that category is a thing."""

    id: int
    category_id: int
    isthing: bool
    area: int = 0
    bbox: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)
    iscrowd: int = 0
    score: float | None = None

    def to_dict(self) -> dict[str, object]:
        """A COCO panoptic `segments_info` entry (plus `isthing`, and `score` for predictions)."""
        entry: dict[str, object] = {
            "id": self.id,
            "category_id": self.category_id,
            "iscrowd": self.iscrowd,
            "bbox": [float(v) for v in self.bbox],
            "area": self.area,
            "isthing": self.isthing,
        }
        if self.score is not None:
            entry["score"] = float(self.score)
        return entry


@dataclass
class PanopticSegmentation:
    """One image's panoptic segmentation (see the module docstring)."""

    segment_ids: np.ndarray
    segments: list[Segment] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.segment_ids.ndim != 2 or not np.issubdtype(self.segment_ids.dtype, np.integer):
            raise ValueError(
                f"segment_ids must be an (H, W) integer array, got {self.segment_ids.dtype} "
                f"{self.segment_ids.shape}"
            )

    @property
    def image_size(self) -> tuple[int, int]:
        return int(self.segment_ids.shape[0]), int(self.segment_ids.shape[1])

    def to_rgb(self) -> np.ndarray:
        """`(H, W, 3)` uint8 in the COCO panoptic PNG encoding (id = R + 256 G + 256^2 B)."""
        ids = self.segment_ids.astype(np.uint32)
        return np.stack([ids & 255, (ids >> 8) & 255, (ids >> 16) & 255], axis=-1).astype(np.uint8)

    @staticmethod
    def ids_from_rgb(rgb: np.ndarray) -> np.ndarray:
        """`(H, W)` int32 segment ids of a COCO panoptic PNG's `(H, W, 3)` uint8 pixels."""
        if rgb.ndim != 3 or rgb.shape[-1] != 3:
            raise ValueError(f"a COCO panoptic PNG has 3 channels (RGB), got shape {rgb.shape}")
        rgb = rgb.astype(np.int32)
        return rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]

    def segments_info(self) -> list[dict[str, object]]:
        """The JSON `segments_info` of this image."""
        return [segment.to_dict() for segment in self.segments]

    def semantic_map(self, class_index: dict[int, int], unlabelled: int = 255) -> np.ndarray:
        """`(H, W)` uint8 (uint16 when needed) class-index map: each pixel the index `class_index` gives its
        segment's category, `unlabelled` where no segment claims it."""
        largest = max([unlabelled, *class_index.values()])
        dtype = np.uint8 if largest < 256 else np.uint16
        lookup = np.full(int(self.segment_ids.max(initial=0)) + 1, unlabelled, dtype=dtype)
        for segment in self.segments:
            if segment.category_id not in class_index:
                raise ValueError(f"segment {segment.id}: category {segment.category_id} has no class index")
            lookup[segment.id] = class_index[segment.category_id]
        return lookup[self.segment_ids]
