"""CondInst on ONNX Runtime: the whole post-processing in the graph, parity with eager PyTorch, loading by
`load_model`, stricter-only options, int8 static quantization."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from instaseg.export.onnx_export import export_onnx
from instaseg.export.parity import compare_instances
from instaseg.export.quantize import quantize_onnx
from instaseg.models import load_model
from instaseg.models.condinst import CondInst, build_condinst
from instaseg.models.onnx_condinst import OnnxCondInst, onnx_family
from instaseg.models.protocol import DetectOptions

pytest.importorskip("onnxruntime")
pytestmark = pytest.mark.slow  # one export takes a few minutes on a busy 2-core machine


def spread_model() -> CondInst:
    """Random weights with scores spread over (0, 1) (distinct, so both backends order them alike)."""
    torch.manual_seed(0)
    model = build_condinst(
        {
            "num_classes": 3,
            "neck_channels": 32,
            "head_channels": 32,
            "pre_nms_top_k": 300,
            "detections_per_img": 60,
        }
    )
    with torch.no_grad():
        torch.nn.init.normal_(model.head.cls_logits.weight, std=1.0)
        model.head.cls_logits.bias.fill_(0.0)
    model.categories = [{"id": 4, "name": "a"}, {"id": 8, "name": "b"}]
    return model


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[CondInst, Path]:
    model = spread_model()
    path = tmp_path_factory.mktemp("onnx") / "condinst.onnx"
    metadata = export_onnx(model, path)
    assert metadata.extra == {"family": "condinst"} and metadata.bn_folded
    return model, path


def images() -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return [torch.rand(3, 70, 90, generator=generator), torch.rand(3, 128, 96, generator=generator)]


def test_onnx_runtime_gives_the_eager_detections(exported):
    model, path = exported
    runtime = load_model(path)
    assert isinstance(runtime, OnnxCondInst) and onnx_family(path) == "condinst"
    assert runtime.categories == model.categories and runtime.num_classes == 3
    assert runtime.summary()["family"] == "condinst" and runtime.summary()["runtime"] == "onnxruntime"
    matched = total = 0
    for image in images():
        with torch.no_grad():
            (eager,) = model.detect([image])
        (onnx,) = runtime.detect([image])
        assert len(eager) == len(onnx) == 60
        stats = compare_instances(eager, onnx)
        # matched pairs agree exactly; a near-tie at the 60-detection cut may swap one instance
        assert stats.label_mismatches == 0 and stats.max_box_error <= 1e-3 and stats.min_mask_iou > 0.99
        matched, total = matched + stats.matched, total + stats.reference_count
    assert matched >= 0.99 * total - 1, (matched, total)


def test_onnx_options_may_only_be_stricter(exported):
    _, path = exported
    runtime = OnnxCondInst(path)
    (fewer,) = runtime.detect(images()[:1], DetectOptions(max_detections=5, score_threshold=0.2))
    assert len(fewer) <= 5 and bool((fewer.scores > 0.2).all())
    with pytest.raises(ValueError, match="cannot loosen its own limits: max_detections=500"):
        runtime.detect(images()[:1], DetectOptions(max_detections=500))


def test_int8_static_quantization_keeps_most_detections(exported, tmp_path):
    from PIL import Image

    model, path = exported
    folder = tmp_path / "calibration"
    folder.mkdir()
    for index, image in enumerate(images()):
        Image.fromarray((image.permute(1, 2, 0) * 255).round().byte().numpy()).save(folder / f"{index}.png")
    quantized = tmp_path / "int8.onnx"
    metadata = quantize_onnx(path, quantized, "static", sorted(folder.glob("*.png")))
    assert metadata.quantization == "int8-static" and metadata.extra["family"] == "condinst"
    runtime = load_model(quantized)
    assert isinstance(runtime, OnnxCondInst)
    (int8,) = runtime.detect(images()[:1])
    with torch.no_grad():
        (eager,) = model.detect(images()[:1])
    stats = compare_instances(eager, int8)
    assert stats.matched >= 0.5 * stats.reference_count
