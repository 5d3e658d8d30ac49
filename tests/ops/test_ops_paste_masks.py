"""paste_masks_in_image: torchvision's fixture, hand-computed values, clipping, degenerate boxes, errors."""

from __future__ import annotations

import pytest
import torch

from instaseg.ops.paste_masks import paste_masks_in_image


@pytest.fixture(scope="module")
def reference(fixtures_dir) -> dict:
    path = fixtures_dir / "ops" / "ops_reference.pt"
    if not path.is_file():
        pytest.skip(f"reference fixture {path} not found")
    return torch.load(path)["paste_masks"]


def random_masks(n: int, size: int = 28, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 1, size, size, generator=torch.Generator().manual_seed(seed))


def test_matches_torchvision_fixture(reference: dict) -> None:
    boxes = reference["boxes"]
    height, width = reference["image_shape"]
    # The fixture exercises clipping at both ends.
    assert (boxes[:, :2] < 0).any() and ((boxes[:, 2] > width) | (boxes[:, 3] > height)).any()
    pasted = paste_masks_in_image(reference["masks"], boxes, reference["image_shape"], reference["padding"])
    assert pasted.shape == reference["output"].shape == (8, 1, 240, 320)
    torch.testing.assert_close(pasted, reference["output"], atol=1e-5, rtol=0)


def test_threshold_gives_bool_masks_matching_the_fixture(reference: dict) -> None:
    pasted = paste_masks_in_image(
        reference["masks"], reference["boxes"], reference["image_shape"], reference["padding"], threshold=0.5
    )
    assert pasted.dtype == torch.bool
    assert torch.equal(pasted, reference["output"] > 0.5)


def test_hand_computed_constant_mask() -> None:
    # A 4x4 mask of ones, padded to 6x6 with a zero border. Box [10, 19]: half-width 4.5 * 6/4 = 6.75 about
    # the centre 14.5 -> region columns/rows 7..21 (15 pixels). Resizing 6 -> 15 samples the padded mask at
    # src = 0.4 * (dst + 0.5) - 0.5: dst 0 -> clamped to 0 (value 0), dst 1 -> 0.1, 2 -> 0.5, 3 -> 0.9.
    box = torch.tensor([[10.0, 10.0, 19.0, 19.0]])
    pasted = paste_masks_in_image(torch.ones(1, 1, 4, 4), box, (30, 30))[0, 0]
    centre = pasted[14]
    assert centre[:7].eq(0).all() and centre[22:].eq(0).all()
    torch.testing.assert_close(centre[7:12], torch.tensor([0.0, 0.1, 0.5, 0.9, 1.0]))
    torch.testing.assert_close(centre[7:22], centre[7:22].flip(0))  # symmetric about the box centre
    torch.testing.assert_close(pasted[7:22, 14], centre[7:22])
    torch.testing.assert_close(pasted[12:17, 12:17], torch.ones(5, 5))


def test_boxes_crossing_the_border_are_cut_not_shifted() -> None:
    masks = random_masks(3, seed=1)
    boxes = torch.tensor([[80.0, 20.0, 140.0, 70.0], [30.0, 85.0, 60.0, 130.0], [95.0, 95.0, 99.0, 99.0]])
    small = paste_masks_in_image(masks, boxes, (100, 100))
    large = paste_masks_in_image(masks, boxes, (200, 200))
    assert torch.equal(small, large[:, :, :100, :100])
    assert large[:, :, 100:, :].any() and large[:, :, :, 100:].any()


def test_boxes_entirely_outside_or_degenerate_give_empty_masks() -> None:
    masks = random_masks(5, seed=2) + 0.1
    boxes = torch.tensor(
        [
            [-80.0, -60.0, -40.0, -30.0],  # above and left of the image
            [200.0, 10.0, 260.0, 40.0],  # right of the image
            [30.0, 30.0, 10.0, 10.0],  # inverted
            [-50.0, -50.0, -70.0, -70.0],  # inverted and outside (torchvision would fail on this one)
            [20.0, 20.0, 20.0, 20.0],  # a point: pastes into the one pixel it sits on
        ]
    )
    pasted = paste_masks_in_image(masks, boxes, (100, 120))
    assert pasted.shape == (5, 1, 100, 120)
    assert not pasted[:4].any()
    assert pasted[4, 0, 20, 20] > 0 and pasted[4].count_nonzero() == 1


def test_empty_input_and_dtypes() -> None:
    empty = paste_masks_in_image(torch.zeros(0, 1, 28, 28), torch.zeros(0, 4), (50, 60))
    assert empty.shape == (0, 1, 50, 60) and empty.dtype == torch.float32
    empty_bool = paste_masks_in_image(torch.zeros(0, 1, 28, 28), torch.zeros(0, 4), (50, 60), threshold=0.5)
    assert empty_bool.shape == (0, 1, 50, 60) and empty_bool.dtype == torch.bool
    masks = random_masks(2, seed=3)
    boxes = torch.tensor([[5.0, 5.0, 30.0, 40.0], [10.0, 0.0, 50.0, 20.0]])
    double = paste_masks_in_image(masks.double(), boxes, (50, 60))
    assert double.dtype == torch.float64
    torch.testing.assert_close(double.float(), paste_masks_in_image(masks, boxes, (50, 60)))


def test_padding_zero_pastes_the_box_itself() -> None:
    pasted = paste_masks_in_image(
        torch.ones(1, 1, 8, 8), torch.tensor([[4.0, 6.0, 11.0, 9.0]]), (20, 20), padding=0
    )
    expected = torch.zeros(20, 20)
    expected[6:10, 4:12] = 1  # inclusive integer region [4, 11] x [6, 9]
    torch.testing.assert_close(pasted[0, 0], expected)


def test_rejects_bad_input() -> None:
    masks, boxes = random_masks(2), torch.tensor([[0.0, 0.0, 5.0, 5.0], [1.0, 1.0, 4.0, 4.0]])
    with pytest.raises(ValueError, match=r"masks must be a floating \(N, 1, M, M\) tensor"):
        paste_masks_in_image(masks[:, 0], boxes, (10, 10))
    with pytest.raises(ValueError, match="2 masks for 1 boxes"):
        paste_masks_in_image(masks, boxes[:1], (10, 10))
    with pytest.raises(ValueError, match="boxes contain NaN or infinite"):
        paste_masks_in_image(
            masks, torch.tensor([[0.0, 0.0, 5.0, 5.0], [1.0, float("nan"), 4.0, 4.0]]), (10, 10)
        )
    with pytest.raises(ValueError, match="image_size must be 2 positive ints"):
        paste_masks_in_image(masks, boxes, (10, 0))
    with pytest.raises(ValueError, match="padding must be a non-negative int"):
        paste_masks_in_image(masks, boxes, (10, 10), padding=-1)
    with pytest.raises(ValueError, match="threshold must be finite or None"):
        paste_masks_in_image(masks, boxes, (10, 10), threshold=float("nan"))
