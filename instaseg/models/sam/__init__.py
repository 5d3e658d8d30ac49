"""Segment Anything (ViT-B/L/H) and MobileSAM (TinyViT) in the official checkpoints' layout.

`load_sam(path)` builds the right model from a checkpoint; `sam_vit(config)` and `mobile_sam()` build fresh
ones. Files: `vit_encoder.py`, `tiny_vit.py` (image encoders), `prompt_encoder.py`, `mask_decoder.py`,
`sam.py` (composition), `transforms.py` (resize, prompt scaling, mask post-processing), `checkpoint.py`.
"""

from instaseg.models.sam.checkpoint import (
    SamCheckpointError,
    detect_architecture,
    is_sam_checkpoint,
    load_sam,
    sam_state_dict,
)
from instaseg.models.sam.sam import MASK_THRESHOLD, Sam, mobile_sam, sam_vit
from instaseg.models.sam.vit_encoder import VIT_B, VIT_H, VIT_L, ViTConfig

__all__ = [
    "MASK_THRESHOLD",
    "VIT_B",
    "VIT_H",
    "VIT_L",
    "Sam",
    "SamCheckpointError",
    "ViTConfig",
    "detect_architecture",
    "is_sam_checkpoint",
    "load_sam",
    "mobile_sam",
    "sam_state_dict",
    "sam_vit",
]
