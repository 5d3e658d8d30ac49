"""int8 quantization of an exported model, calibration images, and batch-norm folding."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from instaseg.cli.main import main
from instaseg.export import ExportError, read_metadata
from instaseg.export.quantize import calibration_images, quantize_onnx
from instaseg.models import MaskRCNN
from instaseg.models.norm import FrozenBatchNorm2d, fold_frozen_batchnorm
from instaseg.models.onnx_runtime import OnnxMaskRCNN

pytest.importorskip("onnxruntime")


def _write_images(folder: Path, images: list[torch.Tensor]) -> None:
    from PIL import Image

    folder.mkdir()
    for index, image in enumerate(images):
        pixels = (image.permute(1, 2, 0) * 255).round().byte().numpy()
        Image.fromarray(pixels).save(folder / f"image_{index}.png")


@pytest.mark.parametrize("mode", ["dynamic", "static"])
def test_int8_model_runs_and_says_so(
    mode: str, lite0_onnx: Path, bright_images: list[torch.Tensor], tmp_path: Path
) -> None:
    _write_images(tmp_path / "calibration", bright_images[1:])
    calibration = calibration_images(tmp_path / "calibration") if mode == "static" else None
    path = tmp_path / f"{mode}.onnx"
    metadata = quantize_onnx(lite0_onnx, path, mode, calibration)
    assert metadata.quantization == f"int8-{mode}" == read_metadata(path).quantization
    assert read_metadata(path).categories == read_metadata(lite0_onnx).categories
    if mode == "static":
        assert metadata.extra == {"calibration_images": "2"}
    instances = OnnxMaskRCNN(path)(bright_images[:1])[0]
    assert len(instances) > 0 and instances.image_size == tuple(bright_images[0].shape[-2:])
    assert torch.isfinite(instances.boxes).all() and instances.masks is not None
    with pytest.raises(ExportError, match="already quantized"):
        quantize_onnx(path, tmp_path / "twice.onnx", "dynamic")


def test_static_quantization_needs_calibration(lite0_onnx: Path, tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="needs calibration images"):
        quantize_onnx(lite0_onnx, tmp_path / "q.onnx", "static")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ExportError, match="holds no images"):
        calibration_images(tmp_path / "empty")
    args = ["export", "--model", "maskrcnn_efficientnet_lite0_fpn", "--out", str(tmp_path / "m.onnx")]
    assert main([*args, "--int8", "static"]) == 2


def test_calibration_images_are_spread_over_the_folder(tmp_path: Path) -> None:
    _write_images(tmp_path / "many", [torch.zeros(3, 4, 4)] * 10)
    chosen = calibration_images(tmp_path / "many", 3)
    assert [path.name for path in chosen] == ["image_0.png", "image_4.png", "image_9.png"]


def test_batch_norm_folding_keeps_the_function(lite0_model: MaskRCNN) -> None:
    body = copy.deepcopy(lite0_model.backbone.body)
    generator = torch.Generator().manual_seed(0)
    for module in body.modules():
        if isinstance(module, FrozenBatchNorm2d):  # statistics far from the identity the random init has
            module.running_mean.normal_(0, 0.2, generator=generator)
            module.running_var.uniform_(0.5, 2.0, generator=generator)
            module.weight.uniform_(0.5, 1.5, generator=generator)
    image = torch.rand(1, 3, 96, 128, generator=generator)
    with torch.no_grad():
        expected = body(image)
        assert fold_frozen_batchnorm(body) == 48  # every conv -> norm pair of Lite0
        actual = body(image)
    assert not any(isinstance(module, FrozenBatchNorm2d) for module in body.modules())
    for before, after in zip(expected, actual, strict=True):
        torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-4 * float(before.abs().max()))
