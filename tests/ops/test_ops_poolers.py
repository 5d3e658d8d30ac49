"""MultiScaleRoIAlign and the FPN level rule: torchvision's fixture, levels by hand, composition, errors."""

from __future__ import annotations

import pytest
import torch

from instaseg.ops import MultiScaleRoIAlign, _extension, assign_boxes_to_levels, roi_align
from instaseg.ops.poolers import pooling_order

NO_EXTENSION = f"instaseg._C not available: {_extension.EXTENSION_ERROR or 'not built'}"

IMAGE = (800, 1216)


@pytest.fixture(params=["kernel", "pure"])
def use_kernel(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    """Runs a test with roi_align's C++ kernel, then with its pure-PyTorch path."""
    if request.param == "kernel":
        if not _extension.HAS_EXTENSION:
            pytest.skip(NO_EXTENSION)
        return True
    monkeypatch.setattr(_extension, "HAS_EXTENSION", False)
    return False


@pytest.fixture(scope="module")
def reference_cases(fixtures_dir) -> list[dict]:
    path = fixtures_dir / "ops" / "ops_reference.pt"
    if not path.is_file():
        pytest.skip(f"reference fixture {path} not found")
    return torch.load(path)["multiscale_roi_align"]


def fpn(
    channels: int = 3, batch: int = 1, size: tuple[int, int] = IMAGE, seed: int = 0
) -> dict[str, torch.Tensor]:
    """Random maps '0'..'3' at strides 4, 8, 16, 32 of a padded batch of `size`, plus an ignored 'pool'."""
    generator = torch.Generator().manual_seed(seed)
    maps = {
        str(i): torch.randn(
            batch, channels, size[0] // 2 ** (i + 2), size[1] // 2 ** (i + 2), generator=generator
        )
        for i in range(4)
    }
    maps["pool"] = torch.randn(batch, channels, size[0] // 64, size[1] // 64, generator=generator)
    return maps


def square(centre: float, side: float) -> list[float]:
    return [centre - side / 2, centre - side / 2, centre + side / 2, centre + side / 2]


# --- torchvision's outputs ----------------------------------------------------------------------------------


@pytest.mark.parametrize("case_index", range(2))
def test_matches_torchvision(use_kernel: bool, reference_cases: list[dict], case_index: int):
    case = reference_cases[case_index]
    pooler = MultiScaleRoIAlign(["0", "1", "2", "3"], case["output_size"], case["sampling_ratio"])
    output = pooler(case["features"], case["boxes"], case["image_shapes"])
    torch.testing.assert_close(output, case["output"], atol=1e-5, rtol=1e-4)


def test_reference_boxes_reach_every_level(reference_cases: list[dict]):
    levels = assign_boxes_to_levels(reference_cases[0]["boxes"][0], 2, 5)
    assert set(levels.tolist()) == {2, 3, 4, 5}


# --- the level rule -----------------------------------------------------------------------------------------


def test_levels_by_hand():
    boxes = torch.tensor(
        [
            square(300, 224),  # the canonical size: level 4 exactly (the 1e-6 absorbs rounding)
            square(300, 223.9),  # just below: level 3
            square(300, 112),  # half: level 3
            square(300, 111.9),  # level 2
            square(300, 448),  # double: level 5
            square(300, 56),  # 4 - 2 = 2
            square(300, 8),  # far below the pyramid (level -1): clamped to 2
            square(300, 2000),  # above: clamped to 5
            [10.0, 10.0, 10.0, 50.0],  # zero area: lowest level
            [50.0, 50.0, 10.0, 90.0],  # inverted (negative area): lowest level
            [0.0, 0.0, 448.0, 112.0],  # non-square: sqrt(area) = 224 -> level 4
        ]
    )
    levels = assign_boxes_to_levels(boxes, 2, 5)
    assert levels.dtype == torch.int64
    assert levels.tolist() == [4, 3, 3, 2, 5, 2, 2, 5, 2, 2, 4]


def test_levels_follow_canonical_scale_and_level():
    boxes = torch.tensor([square(100, 100), square(100, 50), square(100, 200)])
    assert assign_boxes_to_levels(boxes, 0, 9, canonical_scale=100, canonical_level=3).tolist() == [3, 2, 4]
    assert assign_boxes_to_levels(torch.zeros(0, 4), 2, 5).shape == (0,)


# --- composition: the pooler is roi_align on the level each box belongs to ----------------------------------


def test_each_box_is_roi_align_on_its_level_for_a_batch(use_kernel: bool):
    features = fpn(batch=2)
    generator = torch.Generator().manual_seed(1)
    # Image sizes smaller than the padded batch: scales are still 1/4 .. 1/32 (torchvision's inference).
    sizes = [(800, 1199), (771, 1216)]
    boxes = []
    for height, width in sizes:
        sides = torch.rand(40, 2, generator=generator) * 590 + 10
        corner = torch.rand(40, 2, generator=generator) * (torch.tensor([width, height]) - sides)
        boxes.append(torch.cat([corner, corner + sides], dim=1))
    pooler = MultiScaleRoIAlign(["0", "1", "2", "3"], output_size=(7, 5), sampling_ratio=2)
    output = pooler(features, boxes, sizes)

    assert output.shape == (80, 3, 7, 5)
    all_boxes = torch.cat(boxes)
    image_index = [0] * 40 + [1] * 40
    levels = assign_boxes_to_levels(all_boxes, 2, 5)
    assert len(set(levels.tolist())) >= 3
    for i in range(80):
        level = int(levels[i])
        feature = features[str(level - 2)][image_index[i] : image_index[i] + 1]
        expected = roi_align(feature, [all_boxes[i : i + 1]], (7, 5), 2.0**-level, 2)
        torch.testing.assert_close(output[i : i + 1], expected)


def test_output_follows_box_order(use_kernel: bool):
    features = fpn()
    boxes = torch.tensor([square(400, 40), square(400, 500), square(300, 150), square(600, 250)])
    pooler = MultiScaleRoIAlign()
    order = torch.tensor([2, 0, 3, 1])
    forward = pooler(features, [boxes], [IMAGE])
    torch.testing.assert_close(pooler(features, [boxes[order]], [IMAGE]), forward[order])


def test_pooling_order_goes_by_level_image_row_band_then_x():
    # (image, x1, y1, x2, y2); level 2 bands are 4 cells of 4 px = 16 px of centre y.
    rois = torch.tensor(
        [
            [1.0, 0, 100, 10, 110],  # level 2, image 1
            [0.0, 50, 0, 60, 10],  # level 3, image 0
            [0.0, 30, 0, 40, 10],  # level 2, image 0, band 0, x 35
            [0.0, 0, 40, 10, 50],  # level 2, image 0, band 2
            [0.0, 0, 2, 10, 12],  # level 2, image 0, band 0, x 5
        ]
    )
    levels = torch.tensor([2, 3, 2, 2, 2])
    assert pooling_order(rois, levels, num_images=2).tolist() == [4, 2, 3, 0, 1]


def test_many_boxes_on_every_level_come_back_in_their_order(use_kernel: bool):
    generator = torch.Generator().manual_seed(0)
    features = fpn()
    corner = torch.rand(300, 2, generator=generator) * torch.tensor([1100.0, 700.0])
    size = torch.rand(300, 1, generator=generator) ** 2 * 500 + 4
    boxes = torch.cat([corner, corner + size], dim=1)
    output = MultiScaleRoIAlign(output_size=3)(features, [boxes], [IMAGE])
    levels = assign_boxes_to_levels(boxes, 2, 5)
    assert set(levels.tolist()) == {2, 3, 4, 5}
    for i in range(0, 300, 7):
        level = int(levels[i])
        expected = roi_align(features[str(level - 2)], [boxes[i : i + 1]], 3, 2.0**-level, 2)
        torch.testing.assert_close(output[i : i + 1], expected)


def test_a_row_wise_head_is_applied_before_the_rows_go_back_in_order(use_kernel: bool):
    generator = torch.Generator().manual_seed(1)
    features = fpn()
    corner = torch.rand(80, 2, generator=generator) * torch.tensor([1100.0, 700.0])
    boxes = torch.cat([corner, corner + torch.rand(80, 1, generator=generator) ** 2 * 500 + 4], dim=1)
    head = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 3 * 3, 5))
    pooler = MultiScaleRoIAlign(output_size=3)
    with torch.no_grad():
        torch.testing.assert_close(
            pooler(features, [boxes], [IMAGE], head=head), head(pooler(features, [boxes], [IMAGE]))
        )
        assert pooler(features, [torch.zeros(0, 4)], [IMAGE], head=head).shape == (0, 5)


def test_single_level_pools_everything_from_it(use_kernel: bool):
    features = fpn()
    boxes = torch.tensor([square(400, 20), square(400, 700)])
    output = MultiScaleRoIAlign(["2"], output_size=3)(features, [boxes], [IMAGE])
    torch.testing.assert_close(output, roi_align(features["2"], [boxes], 3, 1 / 16, 2))


def test_given_scales_hold_for_an_image_much_shorter_than_its_padding(use_kernel: bool):
    # A 16 x 1000 image padded to 32 x 1024: P2 has 8 rows, which torchvision's rule (finest map height over
    # image height, rounded to a power of two) reads as stride 2.
    features = fpn(size=(32, 1024))
    boxes = torch.tensor([[100.0, 2.0, 140.0, 14.0], [0.0, 0.0, 1000.0, 16.0]])  # levels 2 and 3
    strip = [(16, 1000)]
    given = MultiScaleRoIAlign(output_size=3, scales=[1 / 4, 1 / 8, 1 / 16, 1 / 32])
    output = given(features, [boxes], strip)
    levels = assign_boxes_to_levels(boxes, 2, 5).tolist()
    assert levels == [2, 3]
    for i, level in enumerate(levels):
        expected = roi_align(features[str(level - 2)], [boxes[i : i + 1]], 3, 2.0**-level, 2)
        torch.testing.assert_close(output[i : i + 1], expected)
    inferred = MultiScaleRoIAlign(output_size=3)
    assert inferred.infer_scales(features, strip) == [1 / 2, 1 / 4, 1 / 8, 1 / 16]


def test_gradients_reach_the_levels_their_boxes_use(use_kernel: bool):
    features = {name: value.requires_grad_(True) for name, value in fpn().items()}
    boxes = torch.tensor([square(400, 60), square(400, 300)])  # levels 2 and 4
    MultiScaleRoIAlign()(features, [boxes], [IMAGE]).sum().backward()
    touched = {
        name for name in "0123" if features[name].grad is not None and features[name].grad.abs().sum() > 0
    }
    assert touched == {"0", "2"}


def test_kernel_and_pure_paths_agree_forward_and_backward(monkeypatch: pytest.MonkeyPatch):
    if not _extension.HAS_EXTENSION:
        pytest.skip(NO_EXTENSION)
    generator = torch.Generator().manual_seed(2)
    sides = torch.rand(60, 2, generator=generator) * 590 + 10
    corner = torch.rand(60, 2, generator=generator) * (torch.tensor([1216.0, 800.0]) - sides / 2)
    boxes = [torch.cat([corner, corner + sides], dim=1)]
    grad = torch.randn(60, 4, 14, 14, generator=generator)
    results = []
    for kernel in (True, False):
        monkeypatch.setattr(_extension, "HAS_EXTENSION", kernel)
        features = {name: value.requires_grad_(True) for name, value in fpn(channels=4, seed=3).items()}
        output = MultiScaleRoIAlign(output_size=14)(features, boxes, [IMAGE])
        output.backward(grad)
        results.append((output, [features[name].grad for name in "0123"]))
    torch.testing.assert_close(results[0][0], results[1][0], atol=1e-5, rtol=1e-4)
    for kernel_grad, pure_grad in zip(results[0][1], results[1][1], strict=True):
        torch.testing.assert_close(kernel_grad, pure_grad, atol=1e-5, rtol=1e-4)


# --- edge cases and errors ----------------------------------------------------------------------------------


def test_no_boxes_and_images_without_boxes(use_kernel: bool):
    features = fpn(batch=2)
    pooler = MultiScaleRoIAlign(output_size=(4, 2))
    assert pooler(features, [torch.zeros(0, 4), torch.zeros(0, 4)], [IMAGE, IMAGE]).shape == (0, 3, 4, 2)
    boxes = torch.tensor([square(300, 200)])  # level 3
    both = pooler(features, [torch.zeros(0, 4), boxes], [IMAGE, IMAGE])
    torch.testing.assert_close(both, roi_align(features["1"][1:], [boxes], (4, 2), 1 / 8, 2))


def test_holds_no_state():
    pooler = MultiScaleRoIAlign(["0", "1", "2", "3"], 14, 2)
    assert list(pooler.state_dict()) == []
    assert list(pooler.parameters()) == [] and list(pooler.buffers()) == []


def test_errors_name_the_problem():
    features = fpn()
    boxes = [torch.tensor([square(300, 100)])]
    with pytest.raises(ValueError, match=r"feature maps \['4'\] not found"):
        MultiScaleRoIAlign(["0", "4"])(features, boxes, [IMAGE])
    with pytest.raises(ValueError, match="consecutive pyramid levels"):
        MultiScaleRoIAlign(["0", "2"])(features, boxes, [IMAGE])
    with pytest.raises(ValueError, match="consecutive pyramid levels"):
        MultiScaleRoIAlign(["1", "0"])(features, boxes, [IMAGE])
    with pytest.raises(ValueError, match="2 box tensors and 1 image sizes for a feature batch of 1"):
        MultiScaleRoIAlign()(features, boxes * 2, [IMAGE])
    with pytest.raises(ValueError, match="feature map '1' is"):
        MultiScaleRoIAlign()({**features, "1": features["1"][:, :2]}, boxes, [IMAGE])
    nan_box = [
        torch.tensor([square(300, 100)]),
        torch.tensor([square(200, 50), [0.0, float("nan"), 5.0, 5.0]]),
    ]
    with pytest.raises(ValueError, match=r"box 1 of image 1 has non-finite coordinates"):
        MultiScaleRoIAlign()(fpn(batch=2), nan_box, [IMAGE, IMAGE])
    with pytest.raises(ValueError, match="output_size"):
        MultiScaleRoIAlign(output_size=0)
    with pytest.raises(ValueError, match="featmap_names"):
        MultiScaleRoIAlign("0")


def test_half_precision_features_keep_box_coordinates_exact():
    # bfloat16 spaces numbers near 1000 by 4: boxes must not be rounded to the features' dtype.
    features = {name: value.to(torch.bfloat16) for name, value in fpn(size=(1600, 1600)).items()}
    boxes = [torch.tensor([[1001.3, 700.3, 1181.6, 990.7]])]  # sqrt(area) ~ 229: level 4, stride 16
    output = MultiScaleRoIAlign(output_size=3)(features, boxes, [(1600, 1600)])
    assert output.dtype == torch.bfloat16
    expected = roi_align(features["2"].float(), boxes, 3, 1 / 16, 2)
    torch.testing.assert_close(output.float(), expected, atol=2e-2, rtol=2e-2)
