"""BoxCoder: torchvision's fixtures (incl. the dw/dh clamp), hand-computed deltas, round trips, errors."""

from __future__ import annotations

import math

import pytest
import torch

from instaseg.ops.box_coder import BoxCoder


@pytest.fixture(scope="module")
def reference_cases(fixtures_dir) -> list[dict]:
    path = fixtures_dir / "ops" / "ops_reference.pt"
    if not path.is_file():
        pytest.skip(f"reference fixture {path} not found")
    return torch.load(path)["box_coder"]


def test_matches_torchvision_fixtures(reference_cases: list[dict]) -> None:
    assert {case["weights"] for case in reference_cases} == {(1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)}
    # Some big deltas are beyond the clamp: dw / ww and dh / wh are clamped at log(1000 / 16) before exp.
    assert any(
        (case["big_deltas"][:, 2:] / torch.tensor(case["weights"][2:]) > math.log(1000 / 16)).any()
        for case in reference_cases
    )
    for case in reference_cases:
        coder = BoxCoder(case["weights"])
        deltas = coder.encode(case["reference_boxes"], case["proposals"])
        torch.testing.assert_close(deltas, case["deltas"], atol=1e-4, rtol=0)
        decoded = coder.decode(case["deltas"], case["proposals"])
        assert decoded.shape == (len(case["proposals"]), 1, 4)
        torch.testing.assert_close(decoded[:, 0], case["decoded"], atol=1e-4, rtol=0)
        big = coder.decode(case["big_deltas"], case["proposals"])
        torch.testing.assert_close(big[:, 0], case["big_decoded"], atol=1e-4, rtol=0)


def test_encode_hand_computed() -> None:
    proposal = torch.tensor([[0.0, 0.0, 10.0, 20.0]])  # centre (5, 10), size 10 x 20
    target = torch.tensor([[2.0, 4.0, 22.0, 24.0]])  # centre (12, 14), size 20 x 20
    expected = torch.tensor([[0.7, 0.2, math.log(2.0), 0.0]])
    torch.testing.assert_close(BoxCoder().encode(target, proposal), expected)
    weighted = BoxCoder((10.0, 10.0, 5.0, 5.0)).encode(target, proposal)
    torch.testing.assert_close(weighted, expected * torch.tensor([10.0, 10.0, 5.0, 5.0]))


def test_decode_inverts_encode_for_several_boxes_per_row() -> None:
    g = torch.Generator().manual_seed(0)
    proposals = torch.rand(50, 2, generator=g) * 500
    proposals = torch.cat((proposals, proposals + 5 + torch.rand(50, 2, generator=g) * 200), dim=1)
    coder = BoxCoder((10.0, 10.0, 5.0, 5.0))
    targets = [proposals + torch.randn(50, 4, generator=g) * 3 for _ in range(3)]
    deltas = torch.cat([coder.encode(t, proposals) for t in targets], dim=1)  # (50, 12): K = 3 per row
    decoded = coder.decode(deltas, proposals)
    assert decoded.shape == (50, 3, 4)
    for k, target in enumerate(targets):
        torch.testing.assert_close(decoded[:, k], target, atol=1e-3, rtol=0)


def test_decode_clamps_growth() -> None:
    box = torch.tensor([[0.0, 0.0, 16.0, 16.0]])
    decoded = BoxCoder().decode(torch.tensor([[0.0, 0.0, 100.0, -1.0]]), box)[0, 0]
    width = decoded[2] - decoded[0]
    torch.testing.assert_close(width, torch.tensor(1000.0))  # exp(log(1000 / 16)) * 16
    torch.testing.assert_close(decoded[3] - decoded[1], torch.tensor(16 * math.exp(-1.0)))  # no clamp below


def test_empty_inputs_and_dtype() -> None:
    coder = BoxCoder()
    assert coder.encode(torch.zeros(0, 4), torch.zeros(0, 4)).shape == (0, 4)
    assert coder.decode(torch.zeros(0, 8), torch.zeros(0, 4)).shape == (0, 2, 4)
    boxes = torch.tensor([[1.0, 2.0, 5.0, 9.0]])
    assert coder.decode(torch.zeros(1, 4, dtype=torch.float64), boxes).dtype == torch.float64


def test_rejects_bad_input() -> None:
    coder = BoxCoder()
    with pytest.raises(ValueError, match="weights must be 4 positive finite numbers"):
        BoxCoder((1.0, 1.0, 0.0, 1.0))
    with pytest.raises(ValueError, match=r"reference_boxes must be a floating \(N, 4\)"):
        coder.encode(torch.zeros(3, 5), torch.zeros(3, 4))
    with pytest.raises(ValueError, match="3 reference boxes for 2 proposals"):
        coder.encode(torch.zeros(3, 4), torch.zeros(2, 4))
    with pytest.raises(ValueError, match=r"deltas must be a \(N, 4 \* K\) tensor"):
        coder.decode(torch.zeros(3, 6), torch.zeros(3, 4))
    with pytest.raises(ValueError, match="2 rows of deltas for 3 boxes"):
        coder.decode(torch.zeros(2, 4), torch.zeros(3, 4))
