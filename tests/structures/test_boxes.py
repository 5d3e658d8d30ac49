"""Box arithmetic: hand-computed cases, a brute-force IoU check, empty inputs, bad shapes."""

from __future__ import annotations

import pytest
import torch

from instaseg.structures import (
    box_area,
    box_iou,
    clip_boxes,
    paired_giou,
    paired_iou,
    remove_small_boxes,
    xywh_to_xyxy,
    xyxy_to_xywh,
)


def _iou_by_hand(a: list[float], b: list[float]) -> float:
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = width * height
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def test_box_area_hand_values() -> None:
    boxes = torch.tensor([[0.0, 0.0, 2.0, 3.0], [1.0, 1.0, 1.0, 5.0], [2.5, 1.0, 4.0, 1.5]])
    torch.testing.assert_close(box_area(boxes), torch.tensor([6.0, 0.0, 0.75]))


def test_box_iou_hand_values() -> None:
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
    b = torch.tensor([[1.0, 1.0, 3.0, 3.0], [0.0, 0.0, 2.0, 2.0], [5.0, 5.0, 6.0, 6.0], [0.0, 0.0, 1.0, 2.0]])
    torch.testing.assert_close(box_iou(a, b), torch.tensor([[1 / 7, 1.0, 0.0, 0.5]]))


def test_box_iou_matches_brute_force() -> None:
    generator = torch.Generator().manual_seed(0)
    corners = torch.rand(30, 2, generator=generator) * 50
    sizes = torch.rand(30, 2, generator=generator) * 20
    boxes = torch.cat([corners, corners + sizes], dim=1)
    a, b = boxes[:12], boxes[12:]
    expected = torch.tensor([[_iou_by_hand(x.tolist(), y.tolist()) for y in b] for x in a])
    iou = box_iou(a, b)
    assert iou.shape == (12, 18)
    torch.testing.assert_close(iou, expected)
    assert (iou > 0).any() and (iou == 0).any()  # both overlapping and disjoint pairs were exercised


def test_box_iou_zero_union_is_zero_not_nan_and_differentiable() -> None:
    a = torch.tensor([[1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 2.0, 2.0]], requires_grad=True)
    b = torch.tensor([[1.0, 1.0, 1.0, 1.0]])
    iou = box_iou(a, b)
    assert iou.tolist() == [[0.0], [0.0]]
    iou.sum().backward()
    assert torch.isfinite(a.grad).all()


def test_box_iou_integer_boxes_and_empty_shapes() -> None:
    a = torch.tensor([[0, 0, 4, 4]])
    b = torch.tensor([[2, 0, 6, 4]])
    assert box_iou(a, b).dtype == torch.float32
    assert box_iou(a, b).item() == pytest.approx(8 / 24)
    assert box_iou(torch.zeros(0, 4), b).shape == (0, 1)
    assert box_iou(a.float(), torch.zeros(0, 4)).shape == (1, 0)


def test_clip_boxes_uses_height_then_width() -> None:
    boxes = torch.tensor([[-5.0, -2.0, 50.0, 15.0], [3.0, 4.0, 5.0, 6.0]])
    clipped = clip_boxes(boxes, (10, 40))  # H = 10, W = 40
    torch.testing.assert_close(clipped, torch.tensor([[0.0, 0.0, 40.0, 10.0], [3.0, 4.0, 5.0, 6.0]]))
    assert boxes[0, 0].item() == -5.0  # the input is left untouched
    assert clip_boxes(torch.zeros(0, 4), (10, 40)).shape == (0, 4)


def test_remove_small_boxes_returns_kept_indices() -> None:
    boxes = torch.tensor(
        [[0.0, 0.0, 1.0, 5.0], [0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 5.0, 0.5], [1.0, 1.0, 4.0, 9.0]]
    )
    kept = remove_small_boxes(boxes, 2.0)
    assert kept.tolist() == [1, 3] and kept.dtype == torch.int64
    assert remove_small_boxes(torch.zeros(0, 4), 1.0).shape == (0,)


def test_xywh_conversions() -> None:
    xyxy = torch.tensor([[1.0, 2.0, 4.0, 8.0]])
    xywh = xyxy_to_xywh(xyxy)
    torch.testing.assert_close(xywh, torch.tensor([[1.0, 2.0, 3.0, 6.0]]))
    torch.testing.assert_close(xywh_to_xyxy(xywh), xyxy)
    assert xyxy_to_xywh(torch.zeros(0, 4)).shape == (0, 4)


@pytest.mark.parametrize("function", [box_area, xyxy_to_xywh, xywh_to_xyxy, remove_small_boxes])
def test_wrong_shapes_are_refused(function) -> None:
    arguments = (1.0,) if function is remove_small_boxes else ()
    with pytest.raises(ValueError, match=r"\(N, 4\)"):
        function(torch.zeros(3, 5), *arguments)
    with pytest.raises(ValueError, match=r"\(N, 4\)"):
        function(torch.zeros(4), *arguments)


def test_non_tensor_is_refused() -> None:
    with pytest.raises(TypeError, match="torch.Tensor"):
        box_iou([[0, 0, 1, 1]], torch.zeros(1, 4))


def test_paired_iou_and_giou_compare_row_by_row():
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 1.0, 1.0]])
    b = torch.tensor([[1.0, 0.0, 3.0, 2.0], [2.0, 2.0, 3.0, 3.0]])
    torch.testing.assert_close(paired_iou(a, b), torch.tensor([1 / 3, 0.0]))
    torch.testing.assert_close(paired_giou(a, b), torch.tensor([1 / 3, -7 / 9]))
    torch.testing.assert_close(paired_iou(a, b), box_iou(a, b).diagonal())
