"""AnchorGenerator: torchvision's fixture, hand-computed grids, order, strides, caching, errors."""

from __future__ import annotations

import pytest
import torch

from instaseg.ops.anchors import AnchorGenerator


def features(*sizes: tuple[int, int], dtype: torch.dtype = torch.float32) -> list[torch.Tensor]:
    return [torch.zeros(2, 3, h, w, dtype=dtype) for h, w in sizes]


@pytest.fixture(scope="module")
def reference(fixtures_dir) -> dict:
    path = fixtures_dir / "ops" / "ops_reference.pt"
    if not path.is_file():
        pytest.skip(f"reference fixture {path} not found")
    return torch.load(path)["anchors"]


def test_matches_torchvision_fixture(reference: dict) -> None:
    generator = AnchorGenerator(reference["sizes"], (reference["aspect_ratios"],) * len(reference["sizes"]))
    anchors = generator(features(*reference["feature_sizes"]), reference["image_size"])
    assert anchors.shape == reference["anchors"].shape == (242_934, 4)
    torch.testing.assert_close(anchors, reference["anchors"], atol=1e-4, rtol=0)


def test_defaults_are_mask_rcnn_fpn() -> None:
    generator = AnchorGenerator()
    assert generator.num_anchors_per_location() == [3, 3, 3, 3, 3]
    assert generator.sizes == ((32.0,), (64.0,), (128.0,), (256.0,), (512.0,))
    assert AnchorGenerator(((16, 32),), ((0.5, 1.0, 2.0),)).num_anchors_per_location() == [6]


def test_hand_computed_single_level() -> None:
    generator = AnchorGenerator(((32,),), ((1.0,),))
    anchors = generator(features((2, 2)), (64, 64))  # stride 32, row-major over (y, x)
    expected = torch.tensor(
        [[-16, -16, 16, 16], [16, -16, 48, 16], [-16, 16, 16, 48], [16, 16, 48, 48]], dtype=torch.float32
    )
    assert torch.equal(anchors, expected)


def test_templates_are_rounded_and_ratio_major() -> None:
    generator = AnchorGenerator(((32, 64),), ((0.5, 2.0),))
    anchors = generator(features((1, 1)), (16, 16))
    # ratio 0.5 (h / w): w = 32 * sqrt(2) = 45.25, half 22.6 -> 23; h half 11.3 -> 11. Then size 64, ratio 2.
    expected = torch.tensor(
        [[-23, -11, 23, 11], [-45, -23, 45, 23], [-11, -23, 11, 23], [-23, -45, 23, 45]], dtype=torch.float32
    )
    assert torch.equal(anchors, expected)


def test_levels_are_concatenated_with_integer_strides() -> None:
    generator = AnchorGenerator(((8,), (16,)), ((1.0,), (1.0,)))
    anchors = generator(features((3, 5), (2, 2)), (10, 15))
    assert anchors.shape == (3 * 5 + 2 * 2, 4)
    level0, level1 = anchors[:15], anchors[15:]
    # Level 0: strides 10 // 3 = 3 (y) and 15 // 5 = 3 (x); level 1: 10 // 2 = 5 and 15 // 2 = 7.
    assert level0[:, 0].reshape(3, 5)[0].tolist() == [-4, -1, 2, 5, 8]
    assert level0[:, 1].reshape(3, 5)[:, 0].tolist() == [-4, -1, 2]
    assert level1[:, :2].tolist() == [[-8, -8], [-1, -8], [-8, -3], [-1, -3]]


def test_cache_is_keyed_by_shapes_dtype_and_bounded() -> None:
    generator = AnchorGenerator(((8,),), ((1.0,),))
    first = generator(features((4, 4)), (32, 32))
    assert generator(features((4, 4)), (32, 32)) is first
    other_size = generator(features((4, 4)), (64, 64))
    assert other_size is not first and other_size[1, 0] == 12  # stride 16: x shift 16 - 4
    double = generator(features((4, 4), dtype=torch.float64), (32, 32))
    assert double.dtype == torch.float64 and torch.equal(double.float(), first)
    for size in range(1, 20):
        generator(features((1, 1)), (size, size))
    assert len(generator._cache) <= 8
    assert generator(features((4, 4)), (32, 32)) is not first  # evicted, recomputed equal
    assert torch.equal(generator(features((4, 4)), (32, 32)), first)


def test_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="sizes must have at least one level"):
        AnchorGenerator((), ())
    with pytest.raises(ValueError, match="2 levels of sizes, 1 levels of aspect_ratios"):
        AnchorGenerator(((8,), (16,)), ((1.0,),))
    with pytest.raises(ValueError, match=r"aspect_ratios\[0\] must be positive"):
        AnchorGenerator(((8,),), ((0.0,),))
    generator = AnchorGenerator(((8,),), ((1.0,),))
    with pytest.raises(ValueError, match="got 2 feature maps for 1 levels"):
        generator(features((2, 2), (1, 1)), (8, 8))
    with pytest.raises(ValueError, match=r"feature_maps\[0\] must be \(B, C, h, w\)"):
        generator([torch.zeros(3, 4, 4)], (8, 8))
    with pytest.raises(ValueError, match=r"feature_maps\[0\] is 16x16 cells, which does not fit"):
        generator(features((16, 16)), (8, 8))
