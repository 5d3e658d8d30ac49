"""Detection kernels in PyTorch with torchvision's semantics, plus C++ CPU kernels from ``instaseg._C``.

Box arithmetic lives in ``instaseg.structures.boxes`` and is re-exported here for convenience.
"""

from instaseg.ops.anchors import AnchorGenerator
from instaseg.ops.box_coder import BoxCoder
from instaseg.ops.nms import batched_nms, matrix_nms, nms, nms_torch, soft_nms
from instaseg.ops.paste_masks import paste_masks_in_image
from instaseg.ops.poolers import MultiScaleRoIAlign, assign_boxes_to_levels
from instaseg.ops.roi_align import roi_align, roi_align_torch
from instaseg.structures.boxes import box_area, box_iou, clip_boxes, remove_small_boxes

__all__ = [
    "AnchorGenerator",
    "BoxCoder",
    "MultiScaleRoIAlign",
    "assign_boxes_to_levels",
    "batched_nms",
    "box_area",
    "box_iou",
    "clip_boxes",
    "matrix_nms",
    "nms",
    "nms_torch",
    "paste_masks_in_image",
    "remove_small_boxes",
    "roi_align",
    "roi_align_torch",
    "soft_nms",
]
