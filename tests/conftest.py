"""Shared test fixtures: where the repository and the shared real data live."""

from __future__ import annotations

from pathlib import Path

import pytest

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
def fixtures_dir() -> Path:
    if not FIXTURES.is_dir():
        pytest.skip(f"shared reference fixtures not found at {FIXTURES}")
    return FIXTURES
