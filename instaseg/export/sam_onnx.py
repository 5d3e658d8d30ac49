"""ONNX export of SAM / MobileSAM as two graphs: the image encoder, and the prompt encoder + mask decoder.

- encoder: `image (1, 3, 1024, 1024)` float32, already normalised and padded (`Sam.preprocess`) ->
  `image_embeddings (1, 256, 64, 64)`. Run once per image.
- decoder: `image_embeddings (1, 256, 64, 64)`, `point_coords (B, N, 2)` float32 (x, y in the 1024 input
  frame, pixel corners: `transforms.scale_coords` of original pixels), `point_labels (B, N)` float32 (1
  foreground, 0 background, 2 / 3 a box's top-left / bottom-right corner, -1 padding), `mask_input
  (B, 1, 256, 256)` low-res logits and `has_mask_input (B,)` 0 or 1 -> `low_res_masks (B, 4, 256, 256)` and
  `iou_predictions (B, 4)` (output 0 is the single-mask answer, 1..3 the multimask ones). B (prompts) and N
  (points per prompt) are dynamic. A prompt without a box ends with one padding point (label -1), as
  `PromptEncoder` adds it; `decoder_inputs` builds these arrays from original-image prompts.

The resize, the normalisation and the mask upsampling stay in Python on both sides (`models/sam/transforms`),
as for the Mask R-CNN export. `export_sam` writes both next to each other (`instaseg export --model
mobile_sam.pt --out sam.onnx` -> `sam.encoder.onnx`, `sam.decoder.onnx`); `run_onnx` runs a graph on ONNX
Runtime (the tests compare both with eager PyTorch).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from instaseg.io.atomic import atomic_write
from instaseg.models.sam import Sam
from instaseg.models.sam.onnx_sam import ARCH_METADATA_KEY
from instaseg.models.sam.prompt_encoder import (
    BOX_BOTTOM_RIGHT,
    BOX_TOP_LEFT,
    PADDING_LABEL,
    decoder_inputs,
)

__all__ = [
    "SamDecoderGraph",
    "SamEncoderGraph",
    "SamExport",
    "decoder_inputs",
    "export_sam",
    "export_sam_decoder",
    "export_sam_encoder",
]

ENCODER_INPUTS = ("image",)
ENCODER_OUTPUTS = ("image_embeddings",)
DECODER_INPUTS = ("image_embeddings", "point_coords", "point_labels", "mask_input", "has_mask_input")
DECODER_OUTPUTS = ("low_res_masks", "iou_predictions")


class SamEncoderGraph(nn.Module):
    """The image encoder alone (see the module docstring)."""

    def __init__(self, model: Sam) -> None:
        super().__init__()
        self.image_encoder = model.image_encoder

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.image_encoder(image)


class SamDecoderGraph(nn.Module):
    """Prompt encoder + mask decoder with every prompt kind as labelled points (see the module docstring).

    The same arithmetic as `Sam.decode`: box corners are points with their own embeddings (what
    `PromptEncoder.embed_boxes` adds), and the dense embedding is the mask input's where `has_mask_input`
    is 1, `no_mask_embed` elsewhere.
    """

    def __init__(self, model: Sam) -> None:
        super().__init__()
        self.prompt_encoder = model.prompt_encoder
        self.mask_decoder = model.mask_decoder

    def forward(
        self,
        image_embeddings: torch.Tensor,
        point_coords: torch.Tensor,
        point_labels: torch.Tensor,
        mask_input: torch.Tensor,
        has_mask_input: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        encoder = self.prompt_encoder
        encoded = encoder.pe_layer.points(point_coords + 0.5, encoder.input_image_size)
        labels = point_labels[..., None]
        encoded = torch.where(labels == PADDING_LABEL, torch.zeros_like(encoded), encoded)
        kinds = [
            encoder.not_a_point_embed.weight,
            *(embedding.weight for embedding in encoder.point_embeddings),
        ]
        for label, weight in zip((PADDING_LABEL, 0, 1, BOX_TOP_LEFT, BOX_BOTTOM_RIGHT), kinds, strict=True):
            encoded = encoded + (labels == label).to(encoded.dtype) * weight
        has_mask = has_mask_input.reshape(-1, 1, 1, 1)
        no_mask = encoder.no_mask_embed.weight.reshape(1, -1, 1, 1)
        dense = has_mask * encoder.mask_downscaling(mask_input) + (1 - has_mask) * no_mask
        state = self.mask_decoder.decode_tokens(image_embeddings, encoder.dense_pe(), encoded, dense)
        return self.mask_decoder.masks(state), state.iou


@dataclass(frozen=True)
class SamExport:
    """The two graphs `export_sam` wrote, and the architecture they came from (`vit_t`, `vit_b`, ...)."""

    encoder: Path
    decoder: Path
    arch: str


def export_sam(model: Sam, path: str | Path, opset: int = 18) -> SamExport:
    """Both graphs of `model` beside `path`: `path` with `.encoder` / `.decoder` before its suffix."""
    path = Path(path)
    encoder = export_sam_encoder(model, path.with_suffix(f".encoder{path.suffix}"), opset)
    decoder = export_sam_decoder(model, path.with_suffix(f".decoder{path.suffix}"), opset)
    return SamExport(encoder, decoder, model.arch)


def export_sam_encoder(model: Sam, path: str | Path, opset: int = 18) -> Path:
    """Write the encoder graph of `model` to `path` (an `.onnx` file)."""
    example = torch.zeros(1, 3, model.image_size, model.image_size)
    graph = SamEncoderGraph(model.eval())
    return _export(graph, (example,), ENCODER_INPUTS, ENCODER_OUTPUTS, None, path, opset, model.arch)


def export_sam_decoder(model: Sam, path: str | Path, opset: int = 18) -> Path:
    """Write the decoder graph of `model` to `path`, with a dynamic number of prompts and of points."""
    prompts, points = 2, 3
    example = (
        torch.zeros(1, 256, 64, 64),
        torch.zeros(prompts, points, 2),
        torch.ones(prompts, points),
        torch.zeros(prompts, 1, 256, 256),
        torch.zeros(prompts),
    )
    # B >= 2 while tracing: with one prompt the decoder would take its shared-image branch (eager only); the
    # graph's per-prompt branch gives the same outputs for any B, 1 included (checked by the tests).
    batch = torch.export.Dim("prompts", min=2)
    count = torch.export.Dim("points", min=1)
    dynamic = (
        None,
        {0: batch, 1: count},
        {0: batch, 1: count},
        {0: batch},
        {0: batch},
    )
    graph = SamDecoderGraph(model.eval())
    return _export(graph, example, DECODER_INPUTS, DECODER_OUTPUTS, dynamic, path, opset, model.arch)


def _export(
    graph: nn.Module,
    example: tuple[torch.Tensor, ...],
    input_names: tuple[str, ...],
    output_names: tuple[str, ...],
    dynamic_shapes: tuple | None,
    path: str | Path,
    opset: int,
    arch: str,
) -> Path:
    path = Path(path)
    with torch.no_grad():
        program = torch.onnx.export(
            graph,
            example,
            dynamo=True,
            input_names=list(input_names),
            output_names=list(output_names),
            dynamic_shapes=dynamic_shapes,
            opset_version=opset,
            external_data=False,
            verbose=False,
        )
    proto = program.model_proto
    proto.metadata_props.add(key=ARCH_METADATA_KEY, value=arch)  # OnnxSam reports it
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as stream:
        stream.write(proto.SerializeToString())
    return path


def run_onnx(path: str | Path, inputs: dict[str, np.ndarray], threads: int = 2) -> list[np.ndarray]:
    """Run an exported graph on ONNX Runtime (CPU) with named float32 inputs."""
    import onnxruntime  # only when an exported graph is run

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return session.run(None, inputs)
