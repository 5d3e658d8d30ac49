"""k-center greedy: covers clusters, respects labelled centres, refuses impossible counts."""

from __future__ import annotations

import pytest
import torch

from instaseg.active.coreset import k_center_greedy


def _clusters() -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    centres = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    return torch.cat([c + 0.01 * torch.randn(5, 3, generator=generator) for c in centres])


def test_first_three_picks_cover_the_three_clusters() -> None:
    picked, distances = k_center_greedy(_clusters(), 3)
    assert sorted(index // 5 for index in picked) == [0, 1, 2]
    assert len(distances) == 3


def test_labelled_centres_are_not_picked_again() -> None:
    features = _clusters()
    picked, _ = k_center_greedy(features, 2, labelled=features[:5])  # cluster 0 is already labelled
    assert sorted(index // 5 for index in picked) == [1, 2]


def test_distances_never_grow_after_the_first_pick_with_centres() -> None:
    features = _clusters()
    _, distances = k_center_greedy(features, len(features), labelled=features[:1])
    assert all(later <= earlier + 1e-12 for earlier, later in zip(distances, distances[1:], strict=False))


def test_every_row_is_picked_once() -> None:
    picked, _ = k_center_greedy(_clusters(), 15)
    assert sorted(picked) == list(range(15))


def test_more_picks_than_rows_is_refused() -> None:
    with pytest.raises(ValueError, match="cannot pick 16 of 15"):
        k_center_greedy(_clusters(), 16)
