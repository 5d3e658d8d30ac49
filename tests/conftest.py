"""Shared test fixtures: where the repository and the shared real data live.

Tests that need `../shared` skip, naming the path they looked for, when it is missing; with
`INSTASEG_REQUIRE_SHARED=1` (set by `.ci/run`) such a skip is a failure instead, so that CI cannot pass
without the data it is meant to test on.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
DSB_ROOT = SHARED / "data" / "dsb2018" / "stage1_train"
FIXTURES = SHARED / "fixtures"
REQUIRE_SHARED = os.environ.get("INSTASEG_REQUIRE_SHARED") == "1"


def skip_without_shared(path: Path, what: str) -> None:
    """Skip the calling test when `path` (under ../shared) is missing; fail with INSTASEG_REQUIRE_SHARED=1."""
    if not path.exists():
        message = f"{what} not found at {path}"
        if REQUIRE_SHARED:
            pytest.fail(f"{message} (INSTASEG_REQUIRE_SHARED=1)", pytrace=False)
        pytest.skip(message)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> object:
    """With INSTASEG_REQUIRE_SHARED=1, a skip whose reason names a path under ../shared (test modules that
    check their own fixture files, e.g. `reference fixture <path> not found`) is reported as a failure."""
    outcome = yield
    report = outcome.get_result()
    if REQUIRE_SHARED and report.skipped and isinstance(report.longrepr, tuple):
        reason = str(report.longrepr[2])
        if str(SHARED) in reason:
            report.outcome = "failed"
            report.longrepr = f"{reason} (INSTASEG_REQUIRE_SHARED=1: ../shared is required)"


@pytest.fixture(scope="session")
def dsb_root() -> Path:
    skip_without_shared(DSB_ROOT, "shared nuclei data")
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
    skip_without_shared(FIXTURES, "shared reference fixtures")
    return FIXTURES
