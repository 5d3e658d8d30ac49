"""Shared test fixtures: where the repository and the shared real data live."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
DSB_ROOT = SHARED / "data" / "dsb2018" / "stage1_train"
FIXTURES = SHARED / "fixtures"


@pytest.fixture(scope="session")
def dsb_root() -> Path:
    if not DSB_ROOT.is_dir():
        pytest.skip(f"shared nuclei data not found at {DSB_ROOT}")
    return DSB_ROOT


@pytest.fixture(scope="session")
def dsb_image_ids(dsb_root: Path) -> list[str]:
    """Four small (256x256) images with few nuclei: enough for real-data tests, fast to read."""
    small = []
    for folder in sorted(dsb_root.iterdir()):
        masks = list((folder / "masks").glob("*.png"))
        if 5 <= len(masks) <= 30 and (folder / "images" / f"{folder.name}.png").stat().st_size < 200_000:
            small.append(folder.name)
        if len(small) == 4:
            break
    return small


@pytest.fixture(scope="session")
def tiny_model_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A seeded random-weight 2-class R18 Mask R-CNN checkpoint at 64 px: fast enough to serve in tests."""
    from instaseg.models import build, save_weights

    torch.manual_seed(0)
    model = build(
        "maskrcnn_resnet18_fpn",
        num_classes=2,
        min_size=64,
        max_size=64,
        box_detections_per_img=2,
        rpn_pre_nms_top_n_test=100,
        rpn_post_nms_top_n_test=20,
        fpn_channels=64,
    )
    path = tmp_path_factory.mktemp("tiny_model") / "model.pt"
    save_weights(model, path)
    return path


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    if not FIXTURES.is_dir():
        pytest.skip(f"shared reference fixtures not found at {FIXTURES}")
    return FIXTURES
