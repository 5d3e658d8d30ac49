"""Per-image data structures: boxes (torch functions), masks in COCO's three forms, and `Instances`."""

from instaseg.structures.boxes import (
    box_area,
    box_iou,
    clip_boxes,
    paired_giou,
    paired_iou,
    remove_small_boxes,
    xywh_to_xyxy,
    xyxy_to_xywh,
)
from instaseg.structures.instances import Instances
from instaseg.structures.masks import (
    Masks,
    bitmap_to_polygons,
    decode_rle,
    encode_rle,
    mask_iou,
    merge_rles,
    polygons_to_rle,
    rle_area,
    rle_to_boxes,
    uncompressed_rle_to_rle,
)

__all__ = [
    "Instances",
    "Masks",
    "bitmap_to_polygons",
    "box_area",
    "box_iou",
    "clip_boxes",
    "decode_rle",
    "encode_rle",
    "mask_iou",
    "merge_rles",
    "paired_giou",
    "paired_iou",
    "polygons_to_rle",
    "remove_small_boxes",
    "rle_area",
    "rle_to_boxes",
    "uncompressed_rle_to_rle",
    "xywh_to_xyxy",
    "xyxy_to_xywh",
]
