"""SAM's two exported graphs on ONNX Runtime, behind the interface `SamPredictor` uses (`OnnxSam`).

`instaseg export --model SAM_CHECKPOINT --out sam.onnx` writes `sam.encoder.onnx` and `sam.decoder.onnx`
(`instaseg.export.sam_onnx`); `OnnxSam("sam.onnx")` (or either graph's path) runs them: `encode_image`
normalises and pads like `Sam.preprocess`, then runs the encoder graph; `decode` writes the prompts as
labelled points (`prompt_encoder.decoder_inputs`), runs the decoder graph and picks the single or the three
multimask outputs as `Sam.decode` does. So `SamPredictor(OnnxSam(...))` answers like `SamPredictor(sam)`:
the resize, the prompt scaling and the mask upsampling stay the predictor's, in Python.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from instaseg.models.sam.mask_decoder import selected_outputs
from instaseg.models.sam.prompt_encoder import decoder_inputs
from instaseg.models.sam.sam import MASK_THRESHOLD, PIXEL_MEAN, PIXEL_STD, normalize_and_pad
from instaseg.models.sam.vit_encoder import IMAGE_SIZE

__all__ = ["ARCH_METADATA_KEY", "OnnxSam", "sam_graph_paths"]

# The ONNX metadata key under which the exporter records the architecture (vit_t, vit_b, ...).
ARCH_METADATA_KEY = "instaseg.sam_arch"
_MASK_INPUT_SIZE = (256, 256)


def sam_graph_paths(path: str | Path) -> tuple[Path, Path]:
    """The encoder and decoder files of an export named `path` (`sam.onnx`, `sam.encoder.onnx` or
    `sam.decoder.onnx` -> `sam.encoder.onnx`, `sam.decoder.onnx`)."""
    path = Path(path)
    stem = path.stem.removesuffix(".encoder").removesuffix(".decoder")
    return path.with_name(f"{stem}.encoder{path.suffix}"), path.with_name(f"{stem}.decoder{path.suffix}")


class OnnxSam:
    """The encoder and decoder graphs of one SAM export on ONNX Runtime (CPU), `threads` intra-op threads."""

    mask_threshold = MASK_THRESHOLD
    # SAM's geometry, fixed in the exported graphs.
    embedding_size = (64, 64)
    image_size = IMAGE_SIZE
    mask_input_size = _MASK_INPUT_SIZE

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        import onnxruntime  # only when an exported SAM is run

        encoder, decoder = sam_graph_paths(path)
        for graph in (encoder, decoder):
            if not graph.is_file():
                raise FileNotFoundError(
                    f"{graph}: missing; `instaseg export --model SAM_CHECKPOINT --out "
                    f"{Path(path).name}` writes both graphs"
                )
        options = onnxruntime.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        providers = ["CPUExecutionProvider"]
        self.encoder = onnxruntime.InferenceSession(str(encoder), options, providers=providers)
        self.decoder = onnxruntime.InferenceSession(str(decoder), options, providers=providers)
        self.arch = self.encoder.get_modelmeta().custom_metadata_map.get(ARCH_METADATA_KEY, "unknown")
        self._mean = torch.tensor(PIXEL_MEAN).view(-1, 1, 1)
        self._std = torch.tensor(PIXEL_STD).view(-1, 1, 1)

    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        """Resized image `(1, 3, h, w)` in [0, 255], long side 1024 -> embedding `(1, 256, 64, 64)`."""
        padded = normalize_and_pad(image.float().cpu(), self._mean, self._std)
        (embedding,) = self.encoder.run(None, {"image": padded.numpy()})
        return torch.from_numpy(embedding)

    def encode_detail(self, image: torch.Tensor) -> None:
        """`Sam.encode_detail`: the exported graphs have no second stage (so `SamPredictor`, which refines
        only with detail features, never asks for `refine_masks`)."""
        return None

    def decode(
        self,
        image_embedding: torch.Tensor,
        points: tuple[torch.Tensor, torch.Tensor] | None = None,
        boxes: torch.Tensor | None = None,
        mask_input: torch.Tensor | None = None,
        multimask_output: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`Sam.decode`'s arguments and results (prompts in the 1024 input frame)."""
        given = (points[0] if points is not None else None, boxes, mask_input)
        count = max(tensor.shape[0] for tensor in given if tensor is not None)
        coords, labels = decoder_inputs(*(points or (None, None)), boxes, count)
        has_mask = np.full(count, 0.0 if mask_input is None else 1.0, dtype=np.float32)
        masks_in = torch.zeros(count, 1, *_MASK_INPUT_SIZE) if mask_input is None else mask_input
        low_res, iou = self.decoder.run(
            None,
            {
                "image_embeddings": image_embedding.float().cpu().numpy(),
                "point_coords": coords.cpu().numpy(),
                "point_labels": labels.cpu().numpy(),
                "mask_input": masks_in.float().cpu().expand(count, -1, -1, -1).contiguous().numpy(),
                "has_mask_input": has_mask,
            },
        )
        outputs = selected_outputs(multimask_output)
        return torch.from_numpy(low_res[:, outputs]), torch.from_numpy(iou[:, outputs])
