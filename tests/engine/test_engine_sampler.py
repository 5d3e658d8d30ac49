"""The training sample stream: epochs are permutations, resumption and process count do not change it."""

from __future__ import annotations

import itertools

import pytest

from instaseg.engine.sampler import TrainingBatchSampler, derive_seed


def _take(sampler: TrainingBatchSampler, count: int) -> list[list[tuple[int, int]]]:
    return list(itertools.islice(iter(sampler), count))


def test_each_epoch_is_a_permutation_and_epochs_differ():
    sampler = TrainingBatchSampler(num_images=7, batch_size=7, images_per_forward=7, seed=3)
    first, second = _take(sampler, 2)
    assert sorted(i for i, _ in first) == list(range(7))
    assert sorted(i for i, _ in second) == list(range(7))
    assert [i for i, _ in first] != [i for i, _ in second]
    assert [p for _, p in first + second] == list(range(14))


def test_resume_reads_what_an_uninterrupted_run_reads():
    full = _take(TrainingBatchSampler(10, 4, 2, seed=5), 12)
    resumed = _take(TrainingBatchSampler(10, 4, 2, seed=5, start_iteration=3), 6)
    assert resumed == full[6:]


def test_processes_together_read_what_one_process_reads():
    single = _take(TrainingBatchSampler(9, 4, 1, seed=1), 4 * 5)
    ranks = [_take(TrainingBatchSampler(9, 4, 1, seed=1, rank=r, world_size=2), 2 * 5) for r in range(2)]
    for iteration in range(5):
        merged = ranks[0][2 * iteration : 2 * iteration + 2] + ranks[1][2 * iteration : 2 * iteration + 2]
        assert merged == single[4 * iteration : 4 * iteration + 4]


def test_seed_changes_the_order():
    assert _take(TrainingBatchSampler(20, 20, 20, seed=0), 1) != _take(
        TrainingBatchSampler(20, 20, 20, seed=1), 1
    )
    assert derive_seed(0, 1) != derive_seed(1, 0)
    assert 0 <= derive_seed(2**40, 7) < 2**63


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_images": 0, "batch_size": 2, "images_per_forward": 1}, "no images"),
        (
            {"num_images": 5, "batch_size": 3, "images_per_forward": 1, "world_size": 2},
            "divisible by the number",
        ),
        ({"num_images": 5, "batch_size": 4, "images_per_forward": 3}, "divisible by images_per_forward"),
    ],
)
def test_bad_layouts_are_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TrainingBatchSampler(seed=0, **kwargs)
