"""Deployment: export a Mask R-CNN to ONNX (`export_onnx`, `export_model`), int8 quantization.

Files: `onnx_export.py` (the graph and the exporter, the export cache of `--backend onnx`) -> `quantize.py`
(int8 for ONNX Runtime, calibration) -> `parity.py` (what "same detections" means). What an exported file
says about itself is `instaseg.models.onnx_metadata`, and the backend that runs the files is
`instaseg.models.onnx_runtime`: both sit below this package, since `load_model` reads `.onnx` files. See
docs/deployment.md.
"""

from instaseg.export.onnx_export import DEFAULT_OPSET, export_model, export_onnx
from instaseg.models.onnx_metadata import ExportError, ExportMetadata, OnnxModelError, read_metadata

__all__ = [
    "DEFAULT_OPSET",
    "ExportError",
    "ExportMetadata",
    "OnnxModelError",
    "export_model",
    "export_onnx",
    "read_metadata",
]
