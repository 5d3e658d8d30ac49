"""Deployment: export a Mask R-CNN to ONNX (`export_onnx`, `export_model`), its metadata, int8 quantization.

Files: `metadata.py` (what an exported file says about itself, and the checks on reading it) ->
`onnx_export.py` (the graph and the exporter) -> `quantize.py` (int8 for ONNX Runtime, calibration). The ONNX
Runtime backend that runs the files is `instaseg.inference.onnx_backend`. See docs/deployment.md.
"""

from instaseg.export.metadata import ExportMetadata, OnnxModelError, read_metadata
from instaseg.export.onnx_export import DEFAULT_OPSET, ExportError, export_model, export_onnx

__all__ = [
    "DEFAULT_OPSET",
    "ExportError",
    "ExportMetadata",
    "OnnxModelError",
    "export_model",
    "export_onnx",
    "read_metadata",
]
