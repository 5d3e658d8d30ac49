"""One small random-weight EfficientNet-Lite0 Mask R-CNN checkpoint and its ONNX export, shared by the export
tests (tracing the graph takes most of a test's time, so it is done once per session)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from instaseg.models import MaskRCNN, build

CATEGORIES = [{"id": 7, "name": "nucleus"}]
# Small inputs and few boxes keep each call fast; score threshold 0 so that random weights still detect.
SMALL_LITE0 = {
    "num_classes": 2,
    "min_size": 160,
    "max_size": 256,
    "box_score_thresh": 0.0,
    "box_detections_per_img": 50,
    "rpn_pre_nms_top_n_test": 300,
    "rpn_post_nms_top_n_test": 150,
}


@pytest.fixture(scope="session")
def lite0_model() -> MaskRCNN:
    """The small seeded random-weight model (eval mode; do not modify it)."""
    torch.manual_seed(0)
    return build("maskrcnn_efficientnet_lite0_fpn", **SMALL_LITE0)


@pytest.fixture(scope="session")
def lite0_categories() -> list[dict]:
    return CATEGORIES


@pytest.fixture(scope="session")
def lite0_checkpoint(tmp_path_factory: pytest.TempPathFactory, lite0_model: MaskRCNN) -> Path:
    """An instaseg checkpoint (config, weights, categories) of `lite0_model`."""
    model = lite0_model
    path = tmp_path_factory.mktemp("lite0") / "model.pt"
    torch.save(
        {"config": model.config.to_dict(), "model": model.state_dict(), "categories": CATEGORIES}, path
    )
    return path


@pytest.fixture(scope="session")
def bright_images(dsb_root: Path) -> list[torch.Tensor]:
    """Three small real nuclei images on bright backgrounds, as (3, H, W) [0, 1] tensors.

    Random weights make a chaotic detector on dark fluorescence images: nearly constant features, scores tied
    to 1e-6, so float rounding (even a 1e-6 input change in PyTorch itself) reorders the detections. On these
    images the random model's output is stable, which `test_reference_is_stable` checks, so exact parity
    with ONNX Runtime is a meaningful test. The trained model's parity on all validation images is measured by
    benchmarks/bench_onnx.py.
    """
    from instaseg.io.images import load_image, to_tensor

    images = []
    for folder in sorted(dsb_root.iterdir()):
        path = folder / "images" / f"{folder.name}.png"
        if path.stat().st_size < 200_000:
            image = to_tensor(load_image(path))
            if float(image.mean()) > 0.3:
                images.append(image)
        if len(images) == 3:
            return images
    pytest.skip("fewer than three bright images in the shared nuclei data")


@pytest.fixture(scope="session")
def lite0_onnx(lite0_checkpoint: Path) -> Path:
    """`lite0_checkpoint` exported with the defaults (dynamic size, opset 18, batch norm folded)."""
    from instaseg.export import export_model

    torch.set_num_threads(2)
    path = lite0_checkpoint.with_suffix(".onnx")
    export_model(lite0_checkpoint, path)
    return path
