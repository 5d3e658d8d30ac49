"""Prediction outputs on disk: results.json / images.json, label-map PNGs, GeoJSON polygons, overlay PNGs.

Every file is written atomically (a temporary file in the same folder, then `os.replace`), so a crash or a
full disk leaves either the previous complete file or none, never a truncated one. Failures to write raise
`OutputWriteError` naming the file and the reason.

- `results.json`: COCO results, one record per instance: `image_id`, `file_name`, `category_id`,
  `bbox` [x, y, w, h], `score`, `segmentation` (compressed RLE, `counts` str); `instaseg eval` and
  pycocotools read it as is (they ignore `file_name`).
- `images.json`: `{"images": [{"id", "file_name", "height", "width"}], "categories": [{"id", "name"}],
  "thresholds": {"score_threshold", "mask_threshold"}, "failures": [{"file", "reason"}]}`: every finished
  image (also those without detections), so that results.json plus images.json form a COCO dataset of the
  predictions, and the thresholds the predictions were made with (given, or the model's operating point).
- label maps: a PNG per image of its size, pixel value k = the k-th instance of the image in results.json
  (1-based, by decreasing score), 0 = background; 8-bit up to 255 instances, else 16-bit. Where masks
  overlap, the higher-scoring instance owns the pixel.
- GeoJSON: a FeatureCollection per image, one Feature per instance with a MultiPolygon in image pixel
  coordinates (x right, y down; not geo-referenced) and properties `index`, `category_id`, `category_name`,
  `score`. Rings come from `bitmap_to_polygons` (holes are filled).
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from instaseg.io.atomic import atomic_write
from instaseg.structures.instances import Instances
from instaseg.structures.mask_crops import crops_from_masks
from instaseg.structures.masks import Masks, bitmap_to_polygons


class OutputWriteError(ValueError):
    """An output file could not be written; the message names the file and the reason."""


def write_bytes(path: Path, data: bytes) -> None:
    """Atomically replace `path` with `data`; OS errors (full disk, no permission) become OutputWriteError."""
    try:
        with atomic_write(path, "wb") as stream:
            stream.write(data)
    except OSError as exc:
        raise OutputWriteError(f"cannot write {path}: {exc.strerror or exc}") from exc


def write_json(path: Path, data: object) -> None:
    write_bytes(path, (json.dumps(data, separators=(",", ":")) + "\n").encode("utf-8"))


def encode_png(array: np.ndarray) -> bytes:
    """(H, W, 3) uint8, (H, W) uint8 or (H, W) uint16 array -> PNG bytes."""
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def ensure_writable_folder(folder: Path) -> None:
    """Create `folder` if needed and check a file can be written there, or raise `OutputWriteError`."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputWriteError(f"cannot create output folder {folder}: {exc.strerror or exc}") from exc
    if not folder.is_dir():
        raise OutputWriteError(f"output folder {folder} is not a folder")
    write_bytes(folder / ".instaseg-write-test", b"")
    (folder / ".instaseg-write-test").unlink()


@dataclass
class ResultsFile:
    """Accumulates per-image results; `save()` rewrites results.json and images.json with all of them."""

    folder: Path
    categories: list[dict] = field(default_factory=list)
    thresholds: dict[str, float] = field(default_factory=dict)
    images: list[dict] = field(default_factory=list)
    results: list[dict] = field(default_factory=list)
    failures: list[dict] = field(default_factory=list)

    def add(self, image_id: int, file_name: str, instances: Instances) -> None:
        """Record one finished image (sorted by decreasing score, as label maps number them)."""
        height, width = instances.image_size
        self.images.append({"id": image_id, "file_name": file_name, "height": height, "width": width})
        for record in instances.to_coco_results(image_id):
            self.results.append({"image_id": image_id, "file_name": file_name, **record})

    def add_failure(self, source: str, reason: str) -> None:
        self.failures.append({"file": source, "reason": reason})

    def save(self) -> None:
        """Write results.json, then images.json (both atomically)."""
        write_json(self.folder / "results.json", self.results)
        write_json(
            self.folder / "images.json",
            {
                "images": self.images,
                "categories": self.categories,
                "thresholds": self.thresholds,
                "failures": self.failures,
            },
        )


def label_map(instances: Instances) -> np.ndarray:
    """(H, W) label map: instance k (0-based, in the given order) -> value k + 1; earlier ones win overlaps.

    uint8 for up to 255 instances, uint16 up to 65535; more raises ValueError.
    """
    count = len(instances)
    if count > 65535:
        raise ValueError(f"{count} instances do not fit a 16-bit label map (at most 65535)")
    dtype = np.uint8 if count <= 255 else np.uint16
    height, width = instances.image_size
    labels = np.zeros((height, width), dtype=dtype)
    if count == 0 or instances.masks is None:
        return labels
    # Paint from last to first so that the first (highest-scoring) instance ends on top.
    for index, bitmap in reversed(list(enumerate(instances.masks.bitmaps().cpu().numpy()))):
        labels[bitmap] = index + 1
    return labels


def geojson(instances: Instances, class_names: Mapping[int, str] | None = None) -> dict:
    """GeoJSON FeatureCollection of the instances' mask outlines in image pixels (see module docstring)."""
    features = []
    if instances.masks is not None and len(instances):
        scores = instances.scores.tolist() if instances.scores is not None else [None] * len(instances)
        for index, (parts, label, score) in enumerate(
            zip(_outlines(instances.masks), instances.labels.tolist(), scores, strict=True)
        ):
            polygons = []
            for part in parts:
                ring = [[part[i], part[i + 1]] for i in range(0, len(part), 2)]
                polygons.append([ring + [ring[0]]])  # one outer ring; GeoJSON rings end on their first point
            features.append(
                {
                    "type": "Feature",
                    "geometry": {"type": "MultiPolygon", "coordinates": polygons},
                    "properties": {
                        "index": index + 1,
                        "category_id": label,
                        "category_name": (class_names or {}).get(label),
                        "score": score,
                    },
                }
            )
    return {"type": "FeatureCollection", "features": features}


def _outlines(masks: Masks) -> list[list[list[float]]]:
    """Per instance, its polygon parts in image pixels: stored polygons as they are, else traced.

    Tracing runs on each mask's tight crop and shifts the result: the same polygons as tracing the whole
    image (the crop's border is background either way), at a fraction of the cost for small objects.
    """
    if masks.form == Masks.POLYGONS:
        return masks.polygons()
    outlines = []
    for crop in crops_from_masks(masks):
        parts = bitmap_to_polygons(crop.bitmap) if crop.bitmap.size else []
        offset = np.array([crop.x0, crop.y0], dtype=np.float64)
        outlines.append([(np.asarray(part).reshape(-1, 2) + offset).ravel().tolist() for part in parts])
    return outlines


def polygons_from_geojson(collection: Mapping) -> list[list[list[float]]]:
    """Per feature, its polygon parts as flat [x1, y1, x2, y2, ...] lists (COCO form, no closing point)."""
    if collection.get("type") != "FeatureCollection" or not isinstance(collection.get("features"), list):
        raise ValueError("GeoJSON: expected a FeatureCollection with a 'features' list")
    instances = []
    for number, feature in enumerate(collection["features"]):
        geometry = feature.get("geometry") or {}
        if geometry.get("type") != "MultiPolygon":
            raise ValueError(
                f"GeoJSON feature {number}: expected a MultiPolygon, got {geometry.get('type')!r}"
            )
        parts = []
        for polygon in geometry["coordinates"]:
            outer = polygon[0][:-1]
            parts.append([float(value) for point in outer for value in point])
        instances.append(parts)
    return instances
