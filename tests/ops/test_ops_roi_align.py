"""roi_align: torchvision's fixtures, hand-computed values, gradcheck, C++ vs pure PyTorch, edge cases.

Every behavioural test runs on both paths: "kernel" (the C++ kernel of instaseg._C; skipped when it is not
built) and "pure" (roi_align_torch).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from instaseg.ops import _extension, roi_align, roi_align_torch

NO_EXTENSION = f"instaseg._C not available: {_extension.EXTENSION_ERROR or 'not built'}"

RoIAlign = Callable[..., torch.Tensor]


@pytest.fixture(params=["kernel", "pure"])
def op(request: pytest.FixtureRequest) -> RoIAlign:
    if request.param == "kernel" and not _extension.HAS_EXTENSION:
        pytest.skip(NO_EXTENSION)
    return roi_align if request.param == "kernel" else roi_align_torch


@pytest.fixture(scope="module")
def reference_cases(fixtures_dir) -> list[dict]:
    path = fixtures_dir / "ops" / "ops_reference.pt"
    if not path.is_file():
        pytest.skip(f"reference fixture {path} not found")
    return torch.load(path)["roi_align"]


def ramp(height: int, width: int, channels: int = 1) -> torch.Tensor:
    """(1, C, H, W) with value 3*y + x + 1 + 100*c: bilinear interpolation reproduces it exactly."""
    y = torch.arange(height, dtype=torch.float32)[:, None]
    x = torch.arange(width, dtype=torch.float32)[None, :]
    plane = 3 * y + x + 1
    return torch.stack([plane + 100 * c for c in range(channels)])[None]


def rois(*rows: list[float]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


# --- torchvision's outputs ----------------------------------------------------------------------------------


@pytest.mark.parametrize("case_index", range(5))
def test_matches_torchvision_forward_and_backward(op: RoIAlign, reference_cases: list[dict], case_index: int):
    case = reference_cases[case_index]
    features = case["input"].clone().requires_grad_(True)
    output = op(
        features,
        case["rois"],
        case["output_size"],
        case["spatial_scale"],
        case["sampling_ratio"],
        case["aligned"],
    )
    torch.testing.assert_close(output, case["output"], atol=1e-5, rtol=1e-4)
    (output * case["grad_output"]).sum().backward()
    torch.testing.assert_close(features.grad, case["grad_input"], atol=1e-5, rtol=1e-4)


def test_reference_cases_cover_the_semantics(reference_cases: list[dict]):
    """The fixtures exercise both alignments, adaptive and fixed sampling, and a non-square output."""
    assert {case["aligned"] for case in reference_cases} == {True, False}
    assert {case["sampling_ratio"] > 0 for case in reference_cases} == {True, False}
    assert any(case["output_size"][0] != case["output_size"][1] for case in reference_cases)


# --- hand-computed values -----------------------------------------------------------------------------------


def test_two_by_two_bins_on_a_ramp(op: RoIAlign):
    # Box [0, 0, 2, 2], one sample per bin at the bin centres (0.5, 0.5), (0.5, 1.5), (1.5, 0.5), (1.5, 1.5)
    # of the map 3*y + x + 1.
    output = op(ramp(3, 3), rois([0, 0, 0, 2, 2]), 2, sampling_ratio=1)
    torch.testing.assert_close(output, torch.tensor([[[[3.0, 4.0], [6.0, 7.0]]]]))


@pytest.mark.parametrize("aligned", [False, True])
def test_bin_means_are_bin_centres_on_a_ramp(op: RoIAlign, aligned: bool):
    # On a linear map every bin averages to the map's value at the bin centre; aligned shifts by half a cell.
    x1, y1, x2, y2 = 2.0, 3.0, 12.0, 8.0
    output = op(ramp(20, 20), rois([0, x1, y1, x2, y2]), (5, 4), sampling_ratio=2, aligned=aligned)
    shift = 0.5 if aligned else 0.0
    centre_y = y1 - shift + (torch.arange(5) + 0.5) * (y2 - y1) / 5
    centre_x = x1 - shift + (torch.arange(4) + 0.5) * (x2 - x1) / 4
    expected = 3 * centre_y[:, None] + centre_x[None, :] + 1
    torch.testing.assert_close(output[0, 0], expected)


def test_spatial_scale_maps_image_pixels_to_cells(op: RoIAlign):
    # Box [8, 4, 16, 12] at scale 1/4 covers cells [2, 1, 4, 3]: one sample at its centre (3, 2).
    output = op(ramp(6, 6), rois([0, 8, 4, 16, 12]), 1, spatial_scale=0.25, sampling_ratio=1)
    assert output.item() == pytest.approx(3 * 2 + 3 + 1)


def test_margin_of_one_cell_reads_the_border_and_beyond_reads_zero(op: RoIAlign):
    features = ramp(3, 3)  # corners: (0, 0) -> 1, (2, 2) -> 9
    boxes = rois(
        [0, -1, -1, 0, 0],  # sample at (-0.5, -0.5): clamped to cell (0, 0)
        [0, -2, -2, -1, -1],  # sample at (-1.5, -1.5): more than a cell outside
        [0, 2, 2, 3, 3],  # sample at (2.5, 2.5): between the last cell and the map edge, reads the last cell
        [0, 3, 3, 4, 4],  # sample at (3.5, 3.5): beyond the edge
        [0, -2, 0, -1, 1],  # x outside, y inside: still zero
    )
    output = op(features, boxes, 1, sampling_ratio=1)
    torch.testing.assert_close(output.flatten(), torch.tensor([1.0, 0.0, 9.0, 0.0, 0.0]))


def test_adaptive_sampling_uses_ceil_of_size_over_output_per_axis(op: RoIAlign):
    # Values vary non-linearly along x only: the sample count along x changes the mean, along y it does not.
    # Box 10 cells wide, 4 tall, output 2x2: adaptive grid is ceil(4/2)=2 rows by ceil(10/2)=5 columns.
    x = torch.arange(16, dtype=torch.float32)
    features = (x**2).expand(12, 16)[None, None].contiguous()
    box = rois([0, 1, 2, 11, 6])
    adaptive = op(features, box, 2, sampling_ratio=-1)
    torch.testing.assert_close(adaptive, op(features, box, 2, sampling_ratio=5))
    assert not torch.allclose(adaptive, op(features, box, 2, sampling_ratio=2))
    torch.testing.assert_close(op(features, box, 2, sampling_ratio=0), adaptive)


def test_unaligned_boxes_are_at_least_one_cell(op: RoIAlign):
    features = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    tiny = op(features, rois([0, 2.0, 3.0, 2.25, 3.5], [0, 4, 4, 4, 4]), 2, sampling_ratio=2)
    one_cell = op(features, rois([0, 2.0, 3.0, 3.0, 4.0], [0, 4, 4, 5, 5]), 2, sampling_ratio=2)
    torch.testing.assert_close(tiny, one_cell)


def test_aligned_empty_box_with_adaptive_sampling_gives_zero(op: RoIAlign):
    # No sample points at all (ceil(0 / 2) = 0): torchvision returns 0 rather than dividing by zero.
    features = torch.ones(1, 2, 5, 5)
    output = op(features, rois([0, 2, 2, 2, 2], [0, 3, 3, 1, 1]), 2, sampling_ratio=-1, aligned=True)
    assert torch.equal(output, torch.zeros(2, 2, 2, 2))


def test_box_covering_the_whole_map_of_a_constant_is_that_constant(op: RoIAlign):
    # Samples in the last cell's far half are clamped to the border: nothing leaks a zero in.
    features = torch.full((1, 2, 7, 9), 2.5)
    for aligned in (False, True):
        output = op(features, rois([0, 0, 0, 9, 7]), 3, sampling_ratio=-1, aligned=aligned)
        torch.testing.assert_close(output, torch.full((1, 2, 3, 3), 2.5))


def test_batch_index_selects_the_image_and_list_form_matches(op: RoIAlign):
    features = torch.stack([torch.full((2, 6, 6), 1.0), torch.full((2, 6, 6), 7.0)])
    boxes = [torch.tensor([[1.0, 1, 3, 3]]), torch.tensor([[0.0, 0, 2, 2], [2.0, 2, 5, 5]])]
    from_list = op(features, boxes, 2)
    from_rows = op(features, rois([0, 1, 1, 3, 3], [1, 0, 0, 2, 2], [1, 2, 2, 5, 5]), 2)
    torch.testing.assert_close(from_list, from_rows)
    assert from_list[:, 0, 0, 0].tolist() == [1.0, 7.0, 7.0]


def test_output_keeps_box_order(op: RoIAlign):
    generator = torch.Generator().manual_seed(1)
    features = torch.randn(2, 4, 16, 20, generator=generator)
    boxes = _random_rois(generator, 12, batch=2, height=16, width=20)
    order = torch.randperm(12, generator=generator)
    torch.testing.assert_close(op(features, boxes[order], 3)[:, :], op(features, boxes, 3)[order])


# --- gradients ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("aligned", "sampling_ratio"), [(False, -1), (True, 2), (False, 1), (True, 0)])
def test_gradcheck_float64(op: RoIAlign, aligned: bool, sampling_ratio: int):
    generator = torch.Generator().manual_seed(2)
    features = torch.randn(2, 2, 5, 6, dtype=torch.float64, generator=generator, requires_grad=True)
    boxes = torch.tensor(
        [
            [0, 0.3, 0.7, 4.2, 3.9],
            [1, -1.5, -0.5, 2.5, 6.5],
            [1, 3.1, 2.2, 3.4, 2.3],
            [0, 4.5, 3.5, 7.0, 6.0],
        ],
        dtype=torch.float64,
    )
    assert torch.autograd.gradcheck(
        lambda x: op(x, boxes, (3, 2), spatial_scale=1.0, sampling_ratio=sampling_ratio, aligned=aligned),
        (features,),
    )


def test_no_gradient_flows_to_boxes(op: RoIAlign):
    # As in torchvision: sample positions are not differentiated.
    features = torch.randn(1, 1, 6, 6, requires_grad=True)
    boxes = rois([0, 1.2, 1.3, 4.4, 4.1]).requires_grad_(True)
    op(features, boxes, 2).sum().backward()
    assert boxes.grad is None
    assert features.grad is not None and features.grad.abs().sum() > 0


def test_gradient_of_the_sum_counts_each_cell_once_per_sample(op: RoIAlign):
    # Each bin averages its samples, so d(sum of outputs)/d(input) sums to the number of bins times the
    # fraction of sample weight that lands inside the map: all of it for a box well inside.
    features = torch.zeros(1, 3, 10, 10, requires_grad=True)
    op(features, rois([0, 2.2, 1.4, 7.9, 8.3]), (4, 3), sampling_ratio=2).sum().backward()
    torch.testing.assert_close(features.grad.sum(dim=(0, 2, 3)), torch.full((3,), 12.0))


# --- C++ kernel vs pure PyTorch -----------------------------------------------------------------------------


def _random_rois(generator: torch.Generator, count: int, batch: int, height: int, width: int) -> torch.Tensor:
    """Boxes of all kinds: inside, partly and fully outside, degenerate, inverted, sub-cell."""
    corner = torch.rand(count, 2, generator=generator) * torch.tensor([width + 8.0, height + 8.0]) - 4
    size = torch.rand(count, 2, generator=generator) * torch.tensor([width * 0.8, height * 0.8])
    size[::7] = 0.0  # degenerate
    size[3::7] *= -0.2  # inverted
    size[5::7] = 0.3  # sub-cell
    index = torch.randint(0, batch, (count, 1), generator=generator).float()
    return torch.cat([index, corner, corner + size], dim=1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(
    ("aligned", "sampling_ratio", "output_size"), [(False, -1, 7), (True, 2, (5, 3)), (True, 0, 4)]
)
def test_kernel_matches_pure_pytorch(dtype: torch.dtype, aligned: bool, sampling_ratio: int, output_size):
    if not _extension.HAS_EXTENSION:
        pytest.skip(NO_EXTENSION)
    generator = torch.Generator().manual_seed(3)
    features = torch.randn(2, 5, 23, 31, generator=generator, dtype=dtype)
    boxes = _random_rois(generator, 60, batch=2, height=23 * 2, width=31 * 2).to(dtype)
    grad = torch.randn(
        60, 5, *((output_size,) * 2 if isinstance(output_size, int) else output_size), dtype=dtype
    )
    outputs, grads = [], []
    for function in (roi_align, roi_align_torch):
        x = features.clone().requires_grad_(True)
        output = function(x, boxes, output_size, 0.5, sampling_ratio, aligned)
        output.backward(grad)
        outputs.append(output)
        grads.append(x.grad)
    tolerance = {"atol": 1e-5, "rtol": 1e-4} if dtype == torch.float32 else {"atol": 1e-12, "rtol": 1e-10}
    torch.testing.assert_close(outputs[0], outputs[1], **tolerance)
    torch.testing.assert_close(grads[0], grads[1], **tolerance)


# --- edge cases ---------------------------------------------------------------------------------------------


def test_no_boxes(op: RoIAlign):
    features = torch.randn(2, 3, 8, 8, requires_grad=True)
    for boxes in (torch.zeros(0, 5), [], [torch.zeros(0, 4), torch.zeros(0, 4)]):
        output = op(features, boxes, (2, 3))
        assert output.shape == (0, 3, 2, 3)
    output = op(features, torch.zeros(0, 5), 2)
    output.sum().backward()
    assert torch.equal(features.grad, torch.zeros_like(features))


def test_one_box_one_channel_one_bin(op: RoIAlign):
    features = ramp(4, 4)
    output = op(features, [torch.tensor([[0.0, 0.0, 4.0, 4.0]])], 1, sampling_ratio=2)
    # Samples at 1 and 3 on each axis: 3y + x + 1 averages to 3*2 + 2 + 1; 3 is the last row and column.
    assert output.shape == (1, 1, 1, 1)
    assert output.item() == pytest.approx(9.0)


def test_non_contiguous_input(op: RoIAlign):
    features = torch.randn(2, 8, 9, 4, generator=torch.Generator().manual_seed(4)).permute(0, 3, 1, 2)
    boxes = rois([0, 1, 1, 6, 5], [1, 0, 2, 3, 8])
    torch.testing.assert_close(op(features, boxes, 3), op(features.contiguous(), boxes, 3))


def test_boxes_in_another_float_dtype_are_converted(op: RoIAlign):
    features = torch.randn(1, 2, 6, 6, generator=torch.Generator().manual_seed(5))
    boxes = rois([0, 1.5, 1.0, 4.0, 5.0])
    torch.testing.assert_close(op(features, boxes.double(), 2), op(features, boxes, 2))


# --- errors -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("features", "boxes", "kwargs", "message"),
    [
        (torch.zeros(3, 8, 8), rois([0, 0, 0, 1, 1]), {}, "input must be a floating"),
        (torch.zeros(1, 3, 8, 8, dtype=torch.int64), rois([0, 0, 0, 1, 1]), {}, "input must be a floating"),
        (torch.zeros(1, 3, 8, 8), torch.zeros(2, 4), {}, r"\(K, 5\)"),
        (torch.zeros(1, 3, 8, 8), [torch.zeros(2, 5)], {}, r"boxes\[0\] must be a \(K, 4\)"),
        (
            torch.zeros(1, 3, 8, 8),
            [torch.zeros(1, 4), torch.zeros(1, 4)],
            {},
            "2 box tensors for an input batch of 1",
        ),
        (torch.zeros(2, 3, 8, 8), rois([0, 0, 0, 1, 1], [2, 0, 0, 1, 1]), {}, r"roi 1 = .*\[0, 2\)"),
        (torch.zeros(2, 3, 8, 8), rois([0.5, 0, 0, 1, 1]), {}, "roi 0 .*integer batch index"),
        (torch.zeros(2, 3, 8, 8), rois([-1, 0, 0, 1, 1]), {}, "roi 0"),
        (torch.zeros(1, 3, 8, 8), rois([0, 0, 0, 1, 1], [0, 0, float("nan"), 1, 1]), {}, "roi 1 .*finite"),
        (torch.zeros(1, 3, 8, 8), rois([0, 0, 0, float("inf"), 1]), {}, "roi 0 .*finite"),
        (torch.zeros(1, 3, 8, 8), rois([0, 0, 0, 1, 1]), {"output_size": 0}, "output_size"),
        (torch.zeros(1, 3, 8, 8), rois([0, 0, 0, 1, 1]), {"output_size": (2, 2, 2)}, "output_size"),
        (torch.zeros(1, 3, 8, 8), rois([0, 0, 0, 1, 1]), {"spatial_scale": -0.5}, "spatial_scale"),
        (torch.zeros(1, 3, 8, 8), rois([0, 0, 0, 1, 1]), {"sampling_ratio": 2.5}, "sampling_ratio"),
    ],
)
def test_bad_arguments_raise_value_error(op: RoIAlign, features, boxes, kwargs, message):
    kwargs = {"output_size": 2, **kwargs}
    with pytest.raises(ValueError, match=message):
        op(features, boxes, **kwargs)
