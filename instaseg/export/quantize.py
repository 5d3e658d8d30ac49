"""int8 quantization of an exported model for ONNX Runtime (`quantize_onnx`), with image calibration.

- "dynamic": weights stored as int8, activations quantized on the fly per call (no calibration); matrix
  products only (`DYNAMIC_QUANTIZED_OPS`).
- "static": weights int8 per channel, activations uint8 with ranges measured by running the float model on
  calibration images (`ImageCalibrationReader`: the images pre-processed exactly as at inference), written in
  QDQ form so that ONNX Runtime fuses them into integer convolutions. It covers the convolutions and matrix
  products (`QUANTIZED_OPS`) of the FPN, the RPN head and the RoI heads; the backbone body
  (`STATIC_FLOAT_WEIGHTS`) stays float.

Proposals, NMS, RoiAlign and box decoding stay float in both. Measured speed and accuracy: docs/deployment.md.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from instaseg.export import condinst_export
from instaseg.io.atomic import atomic_write
from instaseg.io.images import images_in_folder, load_image, to_tensor
from instaseg.models.onnx_condinst import condinst_transform_for
from instaseg.models.onnx_metadata import (
    INPUT_NAMES,
    ExportError,
    ExportMetadata,
    read_metadata,
    require_onnx,
    write_metadata,
)
from instaseg.models.onnx_runtime import graph_input, transform_for

QUANTIZATION_MODES = ("dynamic", "static")
QUANTIZED_OPS = ("Conv", "MatMul", "Gemm")
# Dynamic quantization of convolutions (ConvInteger, activations quantized per call) ran ~3x slower than
# float on ONNX Runtime's CPU kernels in a trial: "dynamic" quantizes the box head's matrix products only.
DYNAMIC_QUANTIZED_OPS = ("MatMul", "Gemm")
# Layers left float by static quantization, by weight name. Quantizing the EfficientNet-Lite0 body as well
# cost 3.5 mask AP points on 20 nuclei validation images and was slower on ONNX Runtime (int8 depthwise
# kernels, and quantize/dequantize pairs around the float residual adds; 4.9 points for ~2% speed with the
# adds quantized too); FPN, RPN and heads cost < 0.1 point (docs/benchmarks.md).
STATIC_FLOAT_WEIGHTS = ("backbone.body.",)
DEFAULT_CALIBRATION_IMAGES = 32


class ImageCalibrationReader:
    """ONNX Runtime `CalibrationDataReader` over image files: `get_next()` -> `{"image": (1, 3, h, w)}`
    pre-processed with the exported model's own resize and normalisation, or None after the last image."""

    def __init__(self, images: Sequence[str | Path], metadata: ExportMetadata) -> None:
        condinst = metadata.extra.get("family") == condinst_export.FAMILY
        self.transform = condinst_transform_for(metadata) if condinst else transform_for(metadata)
        self.images = [Path(image) for image in images]
        self._next = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._next >= len(self.images):
            return None
        image = to_tensor(load_image(self.images[self._next]))
        self._next += 1
        return {INPUT_NAMES[0]: graph_input(self.transform, image)[0]}


def calibration_images(folder: str | Path, count: int = DEFAULT_CALIBRATION_IMAGES) -> list[Path]:
    """`count` image files of `folder` (recursively), evenly spaced over their sorted list (all if fewer)."""

    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"calibration folder not found: {folder}")
    images = images_in_folder(folder)
    if not images:
        raise ExportError(f"calibration folder {folder} holds no images")
    if count < 1:
        raise ExportError(f"the number of calibration images must be >= 1, got {count}")
    if len(images) <= count:
        return images
    return [images[int(i)] for i in np.linspace(0, len(images) - 1, count).round()]


def quantize_onnx(
    model_path: str | Path,
    out_path: str | Path,
    mode: str = "dynamic",
    calibration: Sequence[str | Path] | None = None,
) -> ExportMetadata:
    """Write an int8 copy of the exported float model `model_path` to `out_path` (atomically).

    `mode`: "dynamic" or "static"; "static" needs `calibration`, the image files whose activation ranges set
    the quantization (use training images, not the ones you evaluate on). Returns the new file's metadata
    (`quantization` = "int8-dynamic" / "int8-static"; `calibration_images` in its extra entries).
    """
    require_onnx()
    import onnx
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )

    if mode not in QUANTIZATION_MODES:
        raise ExportError(f"quantization mode must be one of {', '.join(QUANTIZATION_MODES)}, got {mode!r}")
    metadata = read_metadata(model_path)
    if metadata.quantization != "none":
        raise ExportError(
            f"{model_path} is already quantized ({metadata.quantization}); start from the float export"
        )
    extra = dict(metadata.extra)
    with tempfile.TemporaryDirectory(prefix="instaseg-quantize-") as folder:
        staged = Path(folder) / "model.onnx"
        if mode == "dynamic":
            quantize_dynamic(
                model_path,
                staged,
                op_types_to_quantize=list(DYNAMIC_QUANTIZED_OPS),
                weight_type=QuantType.QInt8,
            )
        else:
            if not calibration:
                raise ExportError("static quantization needs calibration images (--calibration FOLDER)")
            graph = onnx.load(str(model_path), load_external_data=False).graph
            condinst = metadata.extra.get("family") == condinst_export.FAMILY
            float_weights = condinst_export.STATIC_FLOAT_WEIGHTS if condinst else STATIC_FLOAT_WEIGHTS
            kept_float = [
                node.name
                for node in graph.node
                if node.op_type in QUANTIZED_OPS and node.input[1].startswith(float_weights)
            ]
            quantize_static(
                model_path,
                staged,
                ImageCalibrationReader(calibration, metadata),
                quant_format=QuantFormat.QDQ,
                op_types_to_quantize=list(QUANTIZED_OPS),
                nodes_to_exclude=kept_float,
                per_channel=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod.MinMax,
            )
            extra["calibration_images"] = str(len(calibration))
        model_proto = onnx.load(str(staged))
    quantized = replace(metadata, extra=extra).with_quantization(f"int8-{mode}")
    write_metadata(model_proto, quantized)
    with atomic_write(out_path) as stream:
        stream.write(model_proto.SerializeToString())
    return quantized
