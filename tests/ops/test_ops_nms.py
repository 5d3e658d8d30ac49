"""nms / batched_nms / soft_nms / matrix_nms: torchvision's fixtures, hand-computed cases, edge cases, errors.

Greedy NMS tests run on both paths: "kernel" (the C++ kernel of instaseg._C; skipped when it is not built) and
"pure" (nms_torch / batched_nms_torch).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch

from instaseg.ops import _extension
from instaseg.ops.nms import batched_nms, batched_nms_torch, matrix_nms, nms, nms_torch, soft_nms

Nms = Callable[..., torch.Tensor]

needs_kernel = pytest.mark.skipif(
    not _extension.HAS_EXTENSION, reason=f"instaseg._C is not built ({_extension.EXTENSION_ERROR})"
)


@pytest.fixture(params=["kernel", "pure"])
def nms_op(request: pytest.FixtureRequest) -> Nms:
    if request.param == "kernel" and not _extension.HAS_EXTENSION:
        pytest.skip(f"instaseg._C is not built ({_extension.EXTENSION_ERROR})")
    return nms if request.param == "kernel" else nms_torch


@pytest.fixture(params=["kernel", "pure"])
def batched_op(request: pytest.FixtureRequest) -> Nms:
    if request.param == "kernel" and not _extension.HAS_EXTENSION:
        pytest.skip(f"instaseg._C is not built ({_extension.EXTENSION_ERROR})")
    return batched_nms if request.param == "kernel" else batched_nms_torch


@pytest.fixture(scope="module")
def reference(fixtures_dir) -> dict:
    path = fixtures_dir / "ops" / "ops_reference.pt"
    if not path.is_file():
        pytest.skip(f"reference fixture {path} not found")
    return torch.load(path)


def clustered(n: int, seed: int, clusters: int = 20) -> tuple[torch.Tensor, torch.Tensor]:
    """Boxes jittered around a few base boxes (like RPN proposals) and random scores."""
    g = torch.Generator().manual_seed(seed)
    centre = torch.rand(clusters, 2, generator=g) * 300
    size = 5 + torch.rand(clusters, 2, generator=g) * 100
    base = torch.cat((centre - size / 2, centre + size / 2), dim=1)
    boxes = base[torch.randint(0, clusters, (n,), generator=g)] + torch.randn(n, 4, generator=g) * 4
    boxes[:, 2:] = torch.maximum(boxes[:, 2:], boxes[:, :2] + 0.5)
    return boxes, torch.rand(n, generator=g)


def greedy_reference(boxes: torch.Tensor, scores: torch.Tensor, threshold: float) -> list[int]:
    """Textbook greedy NMS, box by box in Python floats (double): an independent oracle for small inputs."""
    order = sorted(range(len(scores)), key=lambda i: (-float(scores[i]), i))
    kept: list[int] = []
    for i in order:
        if all(_iou(boxes[i].tolist(), boxes[k].tolist()) <= threshold for k in kept):
            kept.append(i)
    return kept


def _iou(a: list[float], b: list[float]) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h
    return w * h / union if union > 0 else 0.0


# ----------------------------------------------------------------------------------------------- greedy nms


def test_nms_matches_torchvision_fixtures(reference: dict, nms_op: Nms) -> None:
    sizes = [len(case["boxes"]) for case in reference["nms"]]
    assert 0 in sizes and max(sizes) == 20_000
    for case in reference["nms"]:
        if nms_op is nms_torch and len(case["boxes"]) > 5000:
            continue  # the pure path on 20k boxes takes a second: test_nms_pure_path_large_fixture (slow)
        keep = nms_op(case["boxes"], case["scores"], case["iou_threshold"])
        assert keep.dtype == torch.int64
        assert torch.equal(keep, case["keep"]), f"N={len(case['boxes'])} thr={case['iou_threshold']}"


@pytest.mark.slow
def test_nms_pure_path_large_fixture(reference: dict) -> None:
    for case in reference["nms"]:
        if len(case["boxes"]) > 5000:
            assert torch.equal(nms_torch(case["boxes"], case["scores"], case["iou_threshold"]), case["keep"])


def test_nms_hand_computed(nms_op: Nms) -> None:
    # IoU(0, 1) = 81 / 119 = 0.68; box 2 overlaps nothing; box 3 is inside box 0: IoU 25 / 100.
    boxes = torch.tensor(
        [[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [0, 0, 5, 5]], dtype=torch.float32
    )
    scores = torch.tensor([0.9, 0.8, 0.7, 0.95])
    assert nms_op(boxes, scores, 0.5).tolist() == [3, 0, 2]
    assert nms_op(boxes, scores, 0.7).tolist() == [3, 0, 1, 2]
    assert nms_op(boxes, scores, 0.2).tolist() == [3, 1, 2]  # IoU(3, 1) = 16 / 109 survives, box 0 does not


def test_nms_iou_equal_to_threshold_is_kept(nms_op: Nms) -> None:
    boxes = torch.tensor([[0, 0, 10, 10], [0, 0, 10, 5]], dtype=torch.float32)  # IoU exactly 0.5
    scores = torch.tensor([0.9, 0.8])
    assert nms_op(boxes, scores, 0.5).tolist() == [0, 1]
    assert nms_op(boxes, scores, 0.49).tolist() == [0]


def test_nms_compares_threshold_in_double_like_torchvision(nms_op: Nms) -> None:
    # IoU 30 / 100 rounds to float32 0.30000001 > 0.3 (double): torchvision suppresses; a float32 comparison
    # against float32(0.3) would keep the box.
    boxes = torch.tensor([[0, 0, 10, 10], [0, 0, 10, 3]], dtype=torch.float32)
    scores = torch.tensor([0.9, 0.8])
    assert nms_op(boxes, scores, 0.3).tolist() == [0]


def test_nms_empty_and_single_box(nms_op: Nms) -> None:
    empty = nms_op(torch.zeros(0, 4), torch.zeros(0), 0.5)
    assert empty.shape == (0,) and empty.dtype == torch.int64
    assert nms_op(torch.tensor([[1.0, 2.0, 3.0, 4.0]]), torch.tensor([0.3]), 0.5).tolist() == [0]


def test_nms_identical_scores_are_stable_by_index(nms_op: Nms) -> None:
    boxes = torch.tensor([[0, 0, 10, 10]] * 3 + [[50, 50, 60, 60], [20, 20, 30, 30]], dtype=torch.float32)
    scores = torch.full((5,), 0.5)
    assert nms_op(boxes, scores, 0.5).tolist() == [0, 3, 4]


def test_nms_degenerate_boxes_never_suppress(nms_op: Nms) -> None:
    # Zero-area boxes have IoU 0 (torchvision: 0/0 = NaN, which is not > threshold): all are kept.
    boxes = torch.tensor([[5, 5, 5, 5], [5, 5, 5, 5], [0, 0, 0, 10], [3, 3, 3, 3]], dtype=torch.float32)
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6])
    assert nms_op(boxes, scores, 0.5).tolist() == [0, 1, 2, 3]


def test_nms_is_translation_invariant_for_out_of_image_boxes(nms_op: Nms) -> None:
    boxes, scores = clustered(300, seed=3)
    boxes = boxes.round()  # integer coordinates: shifting by -1000 is exact in float32
    assert torch.equal(nms_op(boxes - 1000, scores, 0.5), nms_op(boxes, scores, 0.5))


@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.7])
def test_nms_matches_textbook_greedy(nms_op: Nms, threshold: float) -> None:
    boxes, scores = clustered(150, seed=int(threshold * 10))
    boxes = boxes.double()  # the oracle computes in double
    assert nms_op(boxes, scores.double(), threshold).tolist() == greedy_reference(boxes, scores, threshold)


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_nms_kernel_matches_pure_path(dtype: torch.dtype) -> None:
    for seed, n in enumerate((2, 17, 600, 1500)):
        boxes, scores = clustered(n, seed=seed)
        boxes, scores = boxes.to(dtype), scores.to(dtype)
        for threshold in (0.0, 0.3, 0.5, 0.9, 1.0):
            assert torch.equal(nms(boxes, scores, threshold), nms_torch(boxes, scores, threshold))


def test_nms_pure_path_spans_many_blocks() -> None:
    # More boxes than one block of the pure path, with one chain of suppression crossing block borders (the
    # worst case of its fixed-point iteration).
    x = torch.arange(600, dtype=torch.float64)
    boxes = torch.stack((x, torch.zeros_like(x), x + 3, torch.ones_like(x)), dim=1)  # IoU(i, i+1) = 0.5
    scores = 1 - x / 600
    expected = greedy_reference(boxes, scores, 0.4)
    assert expected == list(range(0, 600, 2))
    assert nms_torch(boxes, scores, 0.4).tolist() == expected


def test_nms_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match=r"boxes must be a floating \(N, 4\)"):
        nms(torch.zeros(3, 5), torch.zeros(3), 0.5)
    with pytest.raises(ValueError, match="boxes must be a floating"):
        nms(torch.zeros(3, 4, dtype=torch.int64), torch.zeros(3), 0.5)
    with pytest.raises(ValueError, match=r"scores must be a floating \(N,\) tensor with N = 3"):
        nms(torch.zeros(3, 4), torch.zeros(4), 0.5)
    with pytest.raises(ValueError, match="iou_threshold must not be NaN"):
        nms(torch.zeros(3, 4), torch.zeros(3), math.nan)
    with pytest.raises(ValueError, match="iou_threshold must be a number"):
        nms_torch(torch.zeros(3, 4), torch.zeros(3), "high")


# ----------------------------------------------------------------------------------------------- batched nms


def test_batched_nms_matches_torchvision_fixtures(reference: dict, batched_op: Nms) -> None:
    for case in reference["batched_nms"]:
        keep = batched_op(case["boxes"], case["scores"], case["idxs"], case["iou_threshold"])
        assert torch.equal(keep, case["keep"]), f"N={len(case['boxes'])}"


def test_batched_nms_only_suppresses_within_a_category(batched_op: Nms) -> None:
    boxes = torch.tensor(
        [[0, 0, 10, 10], [0, 0, 10, 10], [1, 0, 10, 10], [40, 40, 50, 50]], dtype=torch.float32
    )
    scores = torch.tensor([0.5, 0.9, 0.7, 0.8])
    idxs = torch.tensor([7, 3, 7, 3])
    # Category 3 keeps 1 and 3; category 7 keeps 2 and drops 0 (IoU 0.9); sorted by score.
    assert batched_op(boxes, scores, idxs, 0.5).tolist() == [1, 3, 2]
    assert batched_op(boxes, scores, torch.zeros(4, dtype=torch.int64), 0.5).tolist() == [1, 3]


@pytest.mark.parametrize("kernel", [True, False], ids=["kernel", "pure"])
def test_batched_nms_max_kept_keeps_the_best(kernel: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    if kernel and not _extension.HAS_EXTENSION:
        pytest.skip("instaseg._C not available")
    monkeypatch.setattr(_extension, "HAS_EXTENSION", kernel)
    boxes, scores = clustered(400, seed=5)
    idxs = torch.arange(400) % 3
    everything = batched_nms(boxes, scores, idxs, 0.5)
    assert 10 < len(everything) < 400
    for max_kept in (0, 1, 10, len(everything), 1000):
        assert torch.equal(batched_nms(boxes, scores, idxs, 0.5, max_kept), everything[:max_kept])
    with pytest.raises(ValueError, match="max_kept must be >= 0"):
        batched_nms(boxes, scores, idxs, 0.5, -1)


def test_batched_nms_empty(batched_op: Nms) -> None:
    keep = batched_op(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.int64), 0.5)
    assert keep.shape == (0,) and keep.dtype == torch.int64


def test_batched_nms_equals_nms_per_category(batched_op: Nms) -> None:
    boxes, scores = clustered(800, seed=11)
    idxs = (
        torch.randint(-3, 4, (800,), generator=torch.Generator().manual_seed(0)) * 10**12
    )  # odd category ids
    keep = batched_op(boxes, scores, idxs, 0.5)
    expected = []
    for category in idxs.unique():
        members = torch.where(idxs == category)[0]
        expected.append(members[nms_torch(boxes[members], scores[members], 0.5)])
    expected = torch.cat(expected)
    assert torch.equal(keep, expected[torch.argsort(scores[expected], descending=True, stable=True)])


@needs_kernel
def test_batched_nms_kernel_matches_pure_path() -> None:
    for seed in range(3):
        boxes, scores = clustered(2000, seed=seed)
        idxs = torch.randint(0, 30, (2000,), generator=torch.Generator().manual_seed(seed))
        for threshold in (0.3, 0.7):
            assert torch.equal(
                batched_nms(boxes, scores, idxs, threshold), batched_nms_torch(boxes, scores, idxs, threshold)
            )


def test_batched_nms_rejects_bad_idxs() -> None:
    with pytest.raises(ValueError, match=r"idxs must be an integer \(N,\) tensor with N = 2"):
        batched_nms(torch.zeros(2, 4), torch.zeros(2), torch.zeros(3, dtype=torch.int64), 0.5)
    with pytest.raises(ValueError, match="idxs must be an integer"):
        batched_nms(torch.zeros(2, 4), torch.zeros(2), torch.zeros(2), 0.5)


# ----------------------------------------------------------------------------------------------- soft nms

# Box 1 overlaps box 0 with IoU exactly 0.5; box 2 overlaps neither.
SOFT_BOXES = torch.tensor([[0, 0, 10, 10], [0, 0, 10, 5], [20, 20, 30, 30]], dtype=torch.float32)
SOFT_SCORES = torch.tensor([0.9, 0.8, 0.7])


def test_soft_nms_gaussian_hand_computed() -> None:
    keep, scores = soft_nms(SOFT_BOXES, SOFT_SCORES, sigma=0.5, method="gaussian")
    # Box 1 decays to 0.8 * exp(-0.5**2 / 0.5) = 0.4852 and falls behind box 2.
    assert keep.tolist() == [0, 2, 1]
    torch.testing.assert_close(scores, torch.tensor([0.9, 0.7, 0.8 * math.exp(-0.5)]))


def test_soft_nms_linear_hand_computed() -> None:
    keep, scores = soft_nms(SOFT_BOXES, SOFT_SCORES, iou_threshold=0.3, method="linear")
    assert keep.tolist() == [0, 2, 1]
    torch.testing.assert_close(scores, torch.tensor([0.9, 0.7, 0.4]))  # 0.8 * (1 - 0.5)
    keep, scores = soft_nms(SOFT_BOXES, SOFT_SCORES, iou_threshold=0.6, method="linear")  # 0.5 is not > 0.6
    assert keep.tolist() == [0, 1, 2]
    torch.testing.assert_close(scores, SOFT_SCORES)


def test_soft_nms_drops_scores_below_threshold() -> None:
    keep, scores = soft_nms(SOFT_BOXES, SOFT_SCORES, iou_threshold=0.3, method="linear", score_threshold=0.45)
    assert keep.tolist() == [0, 2]
    torch.testing.assert_close(scores, torch.tensor([0.9, 0.7]))
    keep, scores = soft_nms(SOFT_BOXES, SOFT_SCORES, score_threshold=0.95)
    assert keep.shape == (0,) and keep.dtype == torch.int64 and scores.shape == (0,)


def test_soft_nms_identical_boxes_decay_progressively() -> None:
    boxes = torch.tensor([[0, 0, 4, 4]] * 3, dtype=torch.float32)
    keep, scores = soft_nms(boxes, torch.tensor([0.6, 0.6, 0.6]), sigma=0.5)
    # IoU 1: each selection multiplies the rest by exp(-2); equal scores go in index order.
    assert keep.tolist() == [0, 1, 2]
    torch.testing.assert_close(scores, torch.tensor([0.6, 0.6 * math.exp(-2), 0.6 * math.exp(-4)]))


def test_soft_nms_empty_and_errors() -> None:
    keep, scores = soft_nms(torch.zeros(0, 4), torch.zeros(0))
    assert keep.shape == (0,) and scores.shape == (0,)
    with pytest.raises(ValueError, match="method must be 'gaussian' or 'linear'"):
        soft_nms(SOFT_BOXES, SOFT_SCORES, method="hard")
    with pytest.raises(ValueError, match="sigma must be a positive finite number"):
        soft_nms(SOFT_BOXES, SOFT_SCORES, sigma=0.0)
    with pytest.raises(ValueError, match="scores contain NaN"):
        soft_nms(SOFT_BOXES, torch.tensor([0.9, math.nan, 0.1]))


# ----------------------------------------------------------------------------------------------- matrix nms


def strip_masks() -> torch.Tensor:
    """(3, 1, 10) masks on a 1x10 strip: columns 0-3, 1-4, 4-7. IoU(0,1) 3/5, IoU(1,2) 1/7, IoU(0,2) 0."""
    masks = torch.zeros(3, 1, 10, dtype=torch.bool)
    masks[0, 0, 0:4] = True
    masks[1, 0, 1:5] = True
    masks[2, 0, 4:8] = True
    return masks


def test_matrix_nms_gaussian_hand_computed() -> None:
    decayed = matrix_nms(strip_masks(), torch.tensor([0.9, 0.8, 0.7]), sigma=2.0)
    # Mask 1 decays by exp(-2 * 0.6**2). Mask 2 overlaps only mask 1, itself suppressed by IoU 0.6, so the
    # compensated factor exp(-2 * (1/7)**2) / exp(-2 * 0.6**2) > 1 leaves it untouched.
    torch.testing.assert_close(decayed, torch.tensor([0.9, 0.8 * math.exp(-0.72), 0.7]))


def test_matrix_nms_linear_hand_computed_and_input_order() -> None:
    permutation = [2, 0, 1]
    decayed = matrix_nms(strip_masks()[permutation], torch.tensor([0.7, 0.9, 0.8]), kernel="linear")
    torch.testing.assert_close(decayed, torch.tensor([0.7, 0.9, 0.8 * (1 - 0.6)]))


def test_matrix_nms_labels_separate_categories() -> None:
    decayed = matrix_nms(strip_masks(), torch.tensor([0.9, 0.8, 0.7]), labels=torch.tensor([0, 1, 1]))
    # Mask 1 no longer sees mask 0, so it is unsuppressed and fully decays mask 2: exp(-2 * (1/7)**2).
    torch.testing.assert_close(decayed, torch.tensor([0.9, 0.8, 0.7 * math.exp(-2 / 49)]))


def test_matrix_nms_duplicates_and_empty_masks() -> None:
    masks = torch.zeros(3, 4, 4, dtype=torch.bool)
    masks[0, :2] = True
    masks[1, :2] = True  # duplicate of mask 0
    decayed = matrix_nms(masks, torch.tensor([0.9, 0.8, 0.5]), kernel="linear")
    torch.testing.assert_close(decayed, torch.tensor([0.9, 0.0, 0.5]))  # the empty mask 2 is untouched
    assert matrix_nms(torch.zeros(0, 4, 4, dtype=torch.bool), torch.zeros(0)).shape == (0,)


def test_matrix_nms_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match=r"masks must be a bool \(N, H, W\) tensor"):
        matrix_nms(torch.zeros(2, 4, 4), torch.zeros(2))
    with pytest.raises(ValueError, match="scores must be a floating"):
        matrix_nms(torch.zeros(2, 4, 4, dtype=torch.bool), torch.zeros(3))
    with pytest.raises(ValueError, match="labels must be an integer"):
        matrix_nms(torch.zeros(2, 4, 4, dtype=torch.bool), torch.zeros(2), labels=torch.zeros(2))
    with pytest.raises(ValueError, match="kernel must be 'gaussian' or 'linear'"):
        matrix_nms(torch.zeros(2, 4, 4, dtype=torch.bool), torch.zeros(2), kernel="box")
