"""Fixtures shared by the model tests."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from instaseg.structures.instances import Instances
from instaseg.structures.masks import Masks


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    """A `(48, 80, 3)` uint8 noise image: wider than tall, so x and y mix-ups show."""
    return (np.random.default_rng(0).random((48, 80, 3)) * 255).astype(np.uint8)


@pytest.fixture(scope="module")
def two_objects() -> Instances:
    """Ground truth for `image`: two rectangles with their boxes, class 1."""
    masks = torch.zeros(2, 48, 80, dtype=torch.bool)
    masks[0, 8:24, 10:30] = True
    masks[1, 20:40, 44:70] = True
    boxes = torch.tensor([[10.0, 8, 30, 24], [44, 20, 70, 40]])
    return Instances((48, 80), boxes, torch.ones(2, dtype=torch.int64), masks=Masks.from_bitmaps(masks))
