"""ONNX Runtime backend of the CondInst family: `OnnxCondInst` runs an exported CondInst graph (see
`instaseg.export.condinst_export`) as a `SegmentationModel`.

The runtime is `OnnxMaskRCNN`'s (session, metadata checks, per-call options that can only be stricter than
the graph's, boxes and masks back to the original image through the same `detections_to_instances`); what
differs is the family's input transform (`NoUpscaleTransform`: scale down only), the graph's own limits (the
CondInst config's thresholds) and the summary.
"""

from __future__ import annotations

from pathlib import Path

from instaseg.models.condinst.model import condinst_summary
from instaseg.models.condinst.transform import NoUpscaleTransform
from instaseg.models.onnx_metadata import ExportMetadata, OnnxModelError, require_onnx
from instaseg.models.onnx_runtime import OnnxMaskRCNN

FAMILY_KEY = "instaseg.family"


def onnx_family(path: str | Path) -> str:
    """The model family an `instaseg export` file holds: its `instaseg.family` metadata ("mask_rcnn" for
    files without it, which all Mask R-CNN exports are)."""
    onnx = require_onnx()
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as error:  # protobuf raises its own types for files that are not ONNX
        raise OnnxModelError(f"{path}: not a readable ONNX file ({error})") from None
    props = {prop.key: prop.value for prop in proto.metadata_props}
    return props.get(FAMILY_KEY, "mask_rcnn")


def condinst_transform_for(metadata: ExportMetadata) -> NoUpscaleTransform:
    """The input transform (scale down only, normalise) an exported CondInst graph expects."""
    return NoUpscaleTransform(
        metadata.max_size, metadata.image_mean, metadata.image_std, metadata.size_divisible
    ).eval()


class OnnxCondInst(OnnxMaskRCNN):
    """A `SegmentationModel`: `detect(images, options)` like an eval-mode `CondInst`, on ONNX Runtime (CPU).

    `threads`: intra-op threads (default `torch.get_num_threads()`). Each image is one graph call. The
    graph's score threshold, NMS IoU and detection limit are the exported config's; `DetectOptions` may only
    make them stricter (`ValueError` naming the option otherwise).
    """

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        super().__init__(path, threads)
        config = self.metadata.config
        if self.metadata.extra.get("family") != "condinst" or not config:
            raise OnnxModelError(f"{self.path}: not a CondInst export (no family 'condinst' and config)")
        self.transform = condinst_transform_for(self.metadata)
        self.exported_limits = {
            "score_threshold": float(config["score_thresh"]),
            "iou_threshold": float(config["nms_thresh"]),
            "max_detections": int(config["detections_per_img"]),
        }

    def summary(self) -> dict[str, object]:
        """Family, backbone, classes and input size limit (from the metadata), and the runtime."""
        return {
            **condinst_summary(self.metadata.config, self.num_classes),
            "runtime": "onnxruntime",
            "quantization": self.metadata.quantization,
        }
