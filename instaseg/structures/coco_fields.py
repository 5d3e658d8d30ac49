"""The rules for COCO fields, in one place: ids, `bbox`, `area`, `iscrowd` and `segmentation` (polygons, RLE).

They sit in `structures` (below `data` and `evaluation`) because `Instances.from_coco` needs them as much as
the readers do.

Every reader and checker of COCO dicts asks these functions: the COCO reader (`instaseg.data.coco`), the
evaluation input checks (`instaseg.evaluation.validation`) and `Instances.from_coco`. Each `*_problem`
function returns None for a valid value, or the reason it is not, worded to follow the name of the record
("annotation 3: ..."); callers add the file and record and decide whether to skip or raise.

Coordinates are image pixels: a `bbox` is `[x, y, width, height]`, a polygon a flat `[x1, y1, x2, y2, ...]` in
continuous pixel coordinates, RLE column-major (`instaseg.structures.masks`).
"""

from __future__ import annotations

import math
from typing import Any

from instaseg.structures.masks import (
    RLE_END_CHARACTER,
    RLE_FIRST_CHARACTER,
    compressed_run_lengths,
    polygons_to_rle,
    uncompressed_rle_to_rle,
)

__all__ = [
    "POLYGON_TOLERANCE_PX",
    "area_problem",
    "bbox_problem",
    "iscrowd_problem",
    "is_int",
    "is_number",
    "polygon_problem",
    "positive_id_problem",
    "rle_problem",
    "segmentation_problem",
    "segmentation_to_rle",
]

# A polygon vertex may lie at most this far outside the image ([-1, W + 1] x [-1, H + 1]): annotation tools
# often overshoot the border by a fraction of a pixel. Such vertices are kept as they are (rasterising clips
# them); anything farther out means the polygon belongs to another image size and is reported.
POLYGON_TOLERANCE_PX = 1.0

_RLE_CHARACTERS = bytes(range(RLE_FIRST_CHARACTER, RLE_END_CHARACTER))

Segmentation = dict[str, Any] | list[list[float]]


def is_int(value: Any) -> bool:
    """True for a JSON integer (bool excluded)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """True for a finite JSON number (bool excluded)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def positive_id_problem(value: Any, kind: str) -> str | None:
    """Why `value` is not a usable `kind` ("image", "annotation") id: COCO matchers take ids <= 0 for
    "unmatched" (AP 0 or a crash), so evaluation needs positive integers."""
    if not is_int(value):
        return f"needs an integer 'id'; got {value!r}"
    if value <= 0:
        return f"{kind} ids must be positive (the COCO matcher takes ids <= 0 for 'unmatched')"
    return None


def bbox_problem(bbox: Any) -> str | None:
    """Why `bbox` is not a COCO box `[x, y, width, height]` of finite numbers with width, height >= 0."""
    if not (isinstance(bbox, list | tuple) and len(bbox) == 4 and all(is_number(v) for v in bbox)):
        return f"'bbox' must be 4 finite numbers [x, y, width, height], got {bbox!r}"
    if bbox[2] < 0 or bbox[3] < 0:
        return (
            "'bbox' has a negative width or height (width and height must be non-negative), "
            f"got {list(bbox)!r}"
        )
    return None


def area_problem(area: Any) -> str | None:
    """Why `area` is not a finite, non-negative number."""
    if not (is_number(area) and area >= 0):
        return f"'area' must be a finite, non-negative number; got {area!r}"
    return None


def iscrowd_problem(iscrowd: Any) -> str | None:
    """Why `iscrowd` is not 0 or 1 (an integer; true / false are refused)."""
    if not is_int(iscrowd) or iscrowd not in (0, 1):
        return f"'iscrowd' must be 0 or 1, got {iscrowd!r}"
    return None


def polygon_problem(polygons: Any, height: int, width: int) -> str | None:
    """Why `polygons` is not a usable instance outline for a (height, width) image, or None if it is.

    A usable outline is a non-empty list of polygons, each a flat list of finite numbers `x1, y1, x2, y2, ...`
    with at least 3 points, every vertex within `POLYGON_TOLERANCE_PX` of the image.
    """
    if not isinstance(polygons, list) or not polygons:
        return "segmentation must be a non-empty list of polygons"
    tol = POLYGON_TOLERANCE_PX
    for index, polygon in enumerate(polygons):
        if not isinstance(polygon, list) or any(
            isinstance(v, bool) or not isinstance(v, int | float) for v in polygon
        ):
            return f"polygon {index} must be a flat list of numbers [x1, y1, x2, y2, ...]"
        if len(polygon) % 2:
            return f"polygon {index} has an odd number of coordinates ({len(polygon)})"
        if len(polygon) < 6:
            return f"polygon {index} has {len(polygon) // 2} point(s); a polygon needs at least 3"
        if not all(math.isfinite(v) for v in polygon):
            return f"polygon {index} has a NaN or infinite coordinate"
        xs, ys = polygon[0::2], polygon[1::2]
        if not (-tol <= min(xs) and max(xs) <= width + tol and -tol <= min(ys) and max(ys) <= height + tol):
            return (
                f"polygon {index} spans x [{min(xs):g}, {max(xs):g}], y [{min(ys):g}, {max(ys):g}]: "
                f"outside the {width}x{height} image by more than {tol:g} px"
            )
    return None


def rle_problem(rle: Any, height: int, width: int) -> str | None:
    """Why `rle` is not a COCO RLE (compressed or uncompressed) of a (height, width) image, or None."""
    if not isinstance(rle, dict) or "size" not in rle or "counts" not in rle:
        return "RLE segmentation must be a dict with 'size' and 'counts'"
    size = rle["size"]
    if not (isinstance(size, list) and len(size) == 2 and all(is_int(v) for v in size)):
        return f"RLE 'size' must be [height, width], got {size!r}"
    if list(size) != [height, width]:
        return f"RLE size {size[0]}x{size[1]} (HxW) differs from the image's {height}x{width}"
    counts = rle["counts"]
    if isinstance(counts, list):
        if not all(is_int(v) and v >= 0 for v in counts):
            return "uncompressed RLE 'counts' must be non-negative integers"
        if sum(counts) != height * width:
            return f"uncompressed RLE counts sum to {sum(counts)}, not height * width = {height * width}"
        return None
    if not isinstance(counts, str | bytes) or not counts:
        return "RLE 'counts' must be a non-empty string (compressed) or a list of integers (uncompressed)"
    raw = counts.encode("utf-8") if isinstance(counts, str) else counts
    if raw.translate(None, _RLE_CHARACTERS):
        return (
            f"compressed RLE 'counts' do not describe a {height}x{width} mask (characters outside '0'..'o')"
        )
    runs = compressed_run_lengths(raw)
    if runs is None or any(run < 0 for run in runs):
        return f"compressed RLE 'counts' do not describe a {height}x{width} mask (malformed runs)"
    if sum(runs) != height * width:
        return f"compressed RLE runs sum to {sum(runs)} pixels, not height * width = {height * width}"
    return None


def segmentation_problem(segmentation: Any, height: int, width: int) -> str | None:
    """Why `segmentation` (polygons or RLE) is not a mask of a (height, width) image, or None."""
    if isinstance(segmentation, list):
        return polygon_problem(segmentation, height, width)
    if isinstance(segmentation, dict):
        return rle_problem(segmentation, height, width)
    return "no segmentation (polygons or RLE) given"


def segmentation_to_rle(segmentation: Segmentation, height: int, width: int) -> dict[str, Any]:
    """A valid segmentation (polygons, compressed or uncompressed RLE) as compressed RLE, `counts` as str."""
    if isinstance(segmentation, list):
        return polygons_to_rle(segmentation, height, width)
    if isinstance(segmentation["counts"], list):
        return uncompressed_rle_to_rle(segmentation)
    counts = segmentation["counts"]
    return {
        "size": list(segmentation["size"]),
        "counts": counts.decode() if isinstance(counts, bytes) else counts,
    }
