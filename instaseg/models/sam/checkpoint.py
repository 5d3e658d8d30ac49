"""Load official Segment Anything (`sam_vit_b/l/h_*.pth`) and MobileSAM (`mobile_sam.pt`) checkpoints.

The architecture is read from the keys and shapes (TinyViT stage keys -> `vit_t`; otherwise the ViT width
from `pos_embed`, depth from the block count, heads from the relative-position width and the global blocks
from the relative-position length), so a file needs no side information. Keys must match exactly (strict):
the first missing or unexpected key, or the first shape mismatch, is named in the error. Repackaged files
are accepted: a state dict under `"model"`, `"model_state"` or `"state_dict"`, with a `sam.`, `model.` or
`module.` prefix on every key.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch

from instaseg.models.sam.sam import Sam, mobile_sam, sam_vit
from instaseg.models.sam.vit_encoder import EMBEDDING_SIZE, VIT_B, VIT_H, VIT_L, ViTConfig

__all__ = ["SamCheckpointError", "detect_architecture", "is_sam_checkpoint", "load_sam", "sam_state_dict"]

_WRAPPER_KEYS = ("model", "model_state", "state_dict")
_PREFIXES = ("sam.", "model.", "module.")
_TINY_VIT_KEY = "image_encoder.layers.0.blocks.0.conv1.c.weight"
_NAMED_CONFIGS = {VIT_B: "vit_b", VIT_L: "vit_l", VIT_H: "vit_h"}


class SamCheckpointError(ValueError):
    """A file or state dict that is not a loadable SAM / MobileSAM checkpoint (the message says why)."""


def sam_state_dict(checkpoint: Mapping, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """The bare SAM state dict inside an official or repackaged checkpoint (wrappers and prefixes removed)."""
    state: Mapping = checkpoint
    for key in _WRAPPER_KEYS:
        inner = state.get(key) if isinstance(state, Mapping) else None
        if isinstance(inner, Mapping) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
            state = inner
            break
    if not isinstance(state, Mapping) or not state:
        raise SamCheckpointError(
            f"{source}: no state dict found (expected tensors, or one under {_WRAPPER_KEYS})"
        )
    for name, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise SamCheckpointError(f"{source}: entry {name!r} is a {type(value).__name__}, not a tensor")
    for prefix in _PREFIXES:
        if all(name.startswith(prefix) for name in state):
            state = {name[len(prefix) :]: value for name, value in state.items()}
            break
    return dict(state)


def is_sam_checkpoint(checkpoint: Mapping) -> bool:
    """Whether an already loaded checkpoint holds a SAM / MobileSAM state dict (official or repackaged):
    what a generic loader asks before handing the file to `load_sam`."""
    try:
        state = sam_state_dict(checkpoint)
    except SamCheckpointError:
        return False
    return any(name.startswith("image_encoder.") for name in state) and any(
        name.startswith("mask_decoder.") for name in state
    )


def detect_architecture(
    state: Mapping[str, torch.Tensor], source: str = "checkpoint"
) -> tuple[str, ViTConfig | None]:
    """(`arch`, ViT config or None for `vit_t`) of a bare SAM state dict, from its keys and shapes."""
    if not any(name.startswith("image_encoder.") for name in state):
        first = next(iter(state), None)
        raise SamCheckpointError(
            f"{source}: not a SAM checkpoint (no image_encoder.* keys; first key is {first!r})"
        )
    if _TINY_VIT_KEY in state:
        return "vit_t", None
    pos_embed = state.get("image_encoder.pos_embed")
    if pos_embed is None or pos_embed.ndim != 4:
        raise SamCheckpointError(
            f"{source}: neither a TinyViT ({_TINY_VIT_KEY}) nor a ViT encoder (image_encoder.pos_embed)"
        )
    embed_dim = int(pos_embed.shape[-1])
    depth = 0
    global_blocks = []
    num_heads = None
    while f"image_encoder.blocks.{depth}.attn.rel_pos_h" in state:
        rel_pos = state[f"image_encoder.blocks.{depth}.attn.rel_pos_h"]
        num_heads = embed_dim // int(rel_pos.shape[1])
        if rel_pos.shape[0] == 2 * EMBEDDING_SIZE - 1:
            global_blocks.append(depth)
        depth += 1
    if depth == 0 or num_heads is None:
        raise SamCheckpointError(f"{source}: ViT encoder without image_encoder.blocks.0.attn.rel_pos_h")
    config = ViTConfig(embed_dim, depth, num_heads, tuple(global_blocks))
    return _NAMED_CONFIGS.get(config, "vit_custom"), config


def load_sam(
    checkpoint: str | Path | Mapping,
    map_location: str | torch.device = "cpu",
    expected_arch: str | None = None,
    source: str | None = None,
) -> Sam:
    """A `Sam` in eval mode with the weights of `checkpoint` (a file path or an already loaded dict).

    `expected_arch` (e.g. `"vit_t"`) refuses a checkpoint of another architecture by name; `source` names a
    loaded dict's file in errors.
    """
    if source is None:
        source = str(checkpoint) if isinstance(checkpoint, str | Path) else "checkpoint"
    if isinstance(checkpoint, str | Path):
        path = Path(checkpoint)
        if not path.is_file():
            raise FileNotFoundError(f"SAM checkpoint not found: {path}")
        try:
            loaded = torch.load(path, map_location=map_location, weights_only=True)
        except Exception as exc:  # torch.load raises many types for a non-checkpoint file
            raise SamCheckpointError(f"{path}: cannot be read as a torch checkpoint ({exc})") from exc
    else:
        loaded = checkpoint
    if not isinstance(loaded, Mapping):
        raise SamCheckpointError(f"{source}: holds a {type(loaded).__name__}, not a state dict")
    state = sam_state_dict(loaded, source)
    arch, config = detect_architecture(state, source)
    if expected_arch is not None and arch != expected_arch:
        raise SamCheckpointError(f"{source}: is a {arch} checkpoint, expected {expected_arch}")
    model = mobile_sam() if config is None else sam_vit(config, arch)
    _check_keys(model, state, source, arch)
    model.load_state_dict(state, strict=True)
    return model.to(map_location).eval()


def _check_keys(model: Sam, state: Mapping[str, torch.Tensor], source: str, arch: str) -> None:
    expected = model.state_dict()
    unexpected = [name for name in state if name not in expected]
    if unexpected:
        raise SamCheckpointError(
            f"{source}: unexpected key {unexpected[0]!r} for a {arch} SAM "
            f"({len(unexpected)} unexpected in all)"
        )
    missing = [name for name in expected if name not in state]
    if missing:
        raise SamCheckpointError(
            f"{source}: missing key {missing[0]!r} for a {arch} SAM ({len(missing)} missing in all)"
        )
    for name, value in state.items():
        if tuple(value.shape) != tuple(expected[name].shape):
            raise SamCheckpointError(
                f"{source}: {name!r} has shape {tuple(value.shape)}, "
                f"a {arch} SAM needs {tuple(expected[name].shape)}"
            )
