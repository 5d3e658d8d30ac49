"""The `Sam` composition: image encoder, prompt encoder and mask decoder, with SAM's pixel normalisation.

`Sam` holds no image state; `instaseg.models.sam.predictor.SamPredictor` caches an image's embedding and runs
prompts against it. Constructors: `sam_vit(config)` (vit_b / vit_l / vit_h / any `ViTConfig`) and
`mobile_sam()` (TinyViT `vit_t`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from instaseg.models.sam.common import MASK_THRESHOLD
from instaseg.models.sam.mask_decoder import MaskDecoder, selected_outputs
from instaseg.models.sam.prompt_encoder import PromptEncoder
from instaseg.models.sam.tiny_vit import TinyViTImageEncoder
from instaseg.models.sam.vit_encoder import IMAGE_SIZE, ViTConfig, ViTImageEncoder

PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)
# Prompts the eager API decodes at a time. The decoder's per-prompt image tensors are (4096, 256) float32,
# 4 MB a prompt: in groups of 4 they stay in cache, about 1.5x faster per prompt than a batch of 64 on a
# 2-core VM (docs/benchmarks.md). Each prompt is decoded independently, so results do not depend on the
# grouping. The ONNX graph decodes its whole batch at once.
DECODE_CHUNK = 4


def normalize_and_pad(image: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """`(B, 3, h, w)` in [0, 255] -> `(image - mean) / std` zero-padded at the bottom / right to 1024 x 1024
    (`mean`, `std` `(3, 1, 1)`); `Sam.preprocess` and `OnnxSam` share it."""
    x = (image - mean) / std
    height, width = x.shape[-2:]
    return F.pad(x, (0, IMAGE_SIZE - width, 0, IMAGE_SIZE - height))


class Sam(nn.Module):
    """Segment Anything; `arch` names the encoder: `vit_b`, `vit_l`, `vit_h`, `vit_t` or `vit_custom`."""

    mask_threshold = MASK_THRESHOLD

    def __init__(self, image_encoder: nn.Module, arch: str) -> None:
        super().__init__()
        self.arch = arch
        self.image_encoder = image_encoder
        self.prompt_encoder = PromptEncoder()
        self.mask_decoder = MaskDecoder()
        self.register_buffer("pixel_mean", torch.tensor(PIXEL_MEAN).view(-1, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(PIXEL_STD).view(-1, 1, 1), persistent=False)

    @property
    def image_size(self) -> int:
        return IMAGE_SIZE

    @property
    def embedding_size(self) -> tuple[int, int]:
        """`(h, w)` cells of the image embedding `(1, 256, h, w)`: 64 x 64 for SAM."""
        return self.prompt_encoder.image_embedding_size

    @property
    def mask_input_size(self) -> tuple[int, int]:
        """`(H, W)` of a low-res mask prompt (256 x 256)."""
        return self.prompt_encoder.mask_input_size

    def preprocess(self, image: torch.Tensor) -> torch.Tensor:
        """Resized image `(B, 3, h, w)` float in [0, 255] -> normalised, zero-padded `(B, 3, 1024, 1024)`.

        Normalise first, then pad: padded pixels are 0 after normalisation (not the mean colour).
        """
        return normalize_and_pad(image, self.pixel_mean, self.pixel_std)

    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        """Resized image `(B, 3, h, w)` in [0, 255], long side 1024 -> embedding `(B, 256, 64, 64)`."""
        return self.image_encoder(self.preprocess(image))

    def encode_detail(self, image: torch.Tensor) -> Any:
        """Features a second stage re-predicts masks from, computed once per image with the embedding
        (`(3, H, W)` uint8 image, original size); None: SAM has no second stage."""
        return None

    def click_boxes(self, detail: Any, clicks: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor | None:
        """A box prompt `(B, 4)` x1y1x2y2 for each of B click prompts that came without a box (clicks
        `(B, N, 2)` x, y and `(B, N)` labels, all in original pixels), derived from `detail`; None: SAM adds
        none."""
        return None

    def refine_masks(
        self,
        detail: Any,
        logits: torch.Tensor,
        iou: torch.Tensor,
        boxes: torch.Tensor | None,
        clicks: tuple[torch.Tensor, torch.Tensor] | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`(B, C, H, W)` full-resolution mask logits and their `(B, C)` scores (predicted IoU) -> the same,
        re-predicted from `detail` with the prompts in original pixels (boxes `(B, 4)` x1y1x2y2, clicks
        `(B, N, 2)` x, y with `(B, N)` labels; None where not given); SAM returns them unchanged."""
        return logits, iou

    def encode_prompts(
        self,
        points: tuple[torch.Tensor, torch.Tensor] | None,
        boxes: torch.Tensor | None,
        mask_input: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The decoder's prompt inputs: sparse tokens `(B, T, 256)` and the dense embedding (see
        `PromptEncoder.forward`); arguments as `decode`."""
        return self.prompt_encoder(points, boxes, mask_input)

    def decode(
        self,
        image_embedding: torch.Tensor,
        points: tuple[torch.Tensor, torch.Tensor] | None = None,
        boxes: torch.Tensor | None = None,
        mask_input: torch.Tensor | None = None,
        multimask_output: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompts in the 1024 input frame -> low-res logits `(B, C, 256, 256)` and predicted IoU `(B, C)`.

        image_embedding `(1, 256, 64, 64)`; points `((B, N, 2) x, y, (B, N) labels 0/1)`; boxes `(B, 4)`
        x1y1x2y2; mask_input `(B, 1, 256, 256)` logits. C = 3 with `multimask_output`, else 1.
        """
        iou, _, masks = self.decode_where(image_embedding, points, boxes, mask_input, draw=_every_prompt)
        outputs = selected_outputs(multimask_output)
        return masks[:, outputs], iou[:, outputs]

    def decode_where(
        self,
        image_embedding: torch.Tensor,
        points: tuple[torch.Tensor, torch.Tensor] | None = None,
        boxes: torch.Tensor | None = None,
        mask_input: torch.Tensor | None = None,
        *,
        draw: Callable[[torch.Tensor], torch.Tensor],
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`decode` for all four outputs, upscaling only the prompts worth drawing (arguments as `decode`).

        `draw(iou (b, 4)) -> (b,) bool` picks, group by group, the prompts whose masks are drawn; the others
        skip the upscaling (about a third of the decoder's time). Each group's updated image tensors are
        dropped once its masks are drawn, so memory stays that of `DECODE_CHUNK` prompts. Returns predicted
        IoU `(B, 4)` of all prompts, the drawn prompts' indices `(K,)` and their logits `(K, 4, 256, 256)`.
        """
        sparse, dense = self.encode_prompts(points, boxes, mask_input)
        pe = self.prompt_encoder.dense_pe()
        ious, drawn, masks = [], [], []
        for rows in _chunks(len(sparse)):
            state = self.mask_decoder.decode_tokens(
                _rows(image_embedding, rows), pe, sparse[rows], _rows(dense, rows)
            )
            picked = torch.nonzero(draw(state.iou))[:, 0]
            ious.append(state.iou)
            drawn.append(picked + rows.start)
            masks.append(
                self.mask_decoder.masks(state if len(picked) == len(state.iou) else state.select(picked))
            )
        return torch.cat(ious), torch.cat(drawn), torch.cat(masks)


def _every_prompt(iou: torch.Tensor) -> torch.Tensor:
    """`decode_where`'s `draw` of `decode`: all prompts."""
    return torch.ones(len(iou), dtype=torch.bool, device=iou.device)


def _chunks(count: int) -> list[slice]:
    """`DECODE_CHUNK` prompts at a time (at least one slice, so an empty batch keeps its shapes)."""
    return [slice(start, start + DECODE_CHUNK) for start in range(0, max(count, 1), DECODE_CHUNK)]


def _rows(tensor: torch.Tensor, rows: slice) -> torch.Tensor:
    """The prompts' rows of a per-prompt tensor; a batch of one (shared by all prompts) as it is."""
    return tensor if tensor.shape[0] == 1 else tensor[rows]


def sam_vit(config: ViTConfig, arch: str = "vit_custom") -> Sam:
    """SAM with a ViT encoder of `config` (e.g. `vit_encoder.VIT_B`, arch `"vit_b"`), in eval mode."""
    return Sam(ViTImageEncoder(config), arch).eval()


def mobile_sam() -> Sam:
    """MobileSAM: SAM's prompt encoder and mask decoder on TinyViT-5M (`vit_t`), in eval mode."""
    return Sam(TinyViTImageEncoder(), "vit_t").eval()
