"""Track ids on a synthetic sequence of moving objects: stable through crossings, misses and shuffles."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from instaseg.inference.tracking import Tracker, TrackerOptions
from instaseg.structures.instances import Instances
from instaseg.structures.masks import Masks

HEIGHT, WIDTH = 120, 320


def disc_mask(cy: float, cx: float, radius: float) -> np.ndarray:
    rows, cols = np.mgrid[0:HEIGHT, 0:WIDTH]
    return (rows - cy) ** 2 + (cols - cx) ** 2 <= radius**2


def frame_instances(
    objects: list[tuple[str, float, float, float, int]], rng: np.random.Generator, with_masks: bool = True
) -> tuple[Instances, list[str]]:
    """Detections of (name, cy, cx, radius, label) objects in a random order, and the names in that order."""
    order = rng.permutation(len(objects)).tolist()
    objects = [objects[i] for i in order]
    bitmaps = (
        np.stack([disc_mask(cy, cx, r) for _, cy, cx, r, _ in objects])
        if objects
        else np.zeros((0, HEIGHT, WIDTH), bool)
    )
    masks = Masks.from_bitmaps(torch.from_numpy(bitmaps))
    instances = Instances(
        (HEIGHT, WIDTH),
        masks.boxes(),
        torch.tensor([label for *_, label in objects], dtype=torch.int64),
        torch.rand(len(objects), generator=torch.Generator().manual_seed(int(rng.integers(1 << 30)))),
        masks if with_masks else None,
    )
    return instances, [name for name, *_ in objects]


def sequence(frame: int) -> list[tuple[str, float, float, float, int]]:
    """A moves right, B moves left and crosses A (their discs overlap around frame 20), C appears at frame 10
    and stays; A is missed in frames 12 and 13 (it moves 18 pixels in the meantime: without the motion model
    its old and new masks would overlap with IoU < 0.1)."""
    objects = []
    if frame not in (12, 13):
        objects.append(("A", 50.0, 30.0 + 6 * frame, 12.0, 1))
    objects.append(("B", 66.0, 290.0 - 6 * frame, 12.0, 1))
    if frame >= 10:
        objects.append(("C", 100.0, 150.0, 10.0, 1))
    return objects


@pytest.mark.parametrize("use_masks", [True, False])
def test_ids_are_stable_on_a_moving_sequence(use_masks):
    rng = np.random.default_rng(0)
    tracker = Tracker(TrackerOptions(use_masks=use_masks))
    ids_of: dict[str, set[int]] = {"A": set(), "B": set(), "C": set()}
    for frame in range(30):
        instances, names = frame_instances(sequence(frame), rng, with_masks=use_masks)
        tracked = tracker.update(instances)
        assert tracked.fields["track_ids"].dtype == torch.int64
        for name, track_id in zip(names, tracked.fields["track_ids"].tolist(), strict=True):
            ids_of[name].add(track_id)
    assert ids_of == {"A": {1}, "B": {2}, "C": {3}}


def test_motion_model_is_what_bridges_the_gap():
    # The same sequence with every velocity forced to zero: A gets a new id after its two-frame miss.
    class NoMotion(Tracker):
        def update(self, instances: Instances) -> Instances:
            for track in self._tracks:
                track.velocity = torch.zeros(4)
            return super().update(instances)

    rng = np.random.default_rng(0)
    tracker = NoMotion()
    ids_of_a = set()
    for frame in range(20):
        instances, names = frame_instances(sequence(frame), rng)
        ids = tracker.update(instances).fields["track_ids"].tolist()
        ids_of_a.update(i for name, i in zip(names, ids, strict=True) if name == "A")
    assert len(ids_of_a) == 2


def test_labels_must_match_and_lost_tracks_end_after_max_age():
    tracker = Tracker(TrackerOptions(max_age=2))
    rng = np.random.default_rng(1)
    first, _ = frame_instances([("X", 60.0, 60.0, 10.0, 1)], rng)
    assert tracker.update(first).fields["track_ids"].tolist() == [1]
    relabelled, _ = frame_instances([("X", 60.0, 60.0, 10.0, 2)], rng)
    assert tracker.update(relabelled).fields["track_ids"].tolist() == [2]
    empty, _ = frame_instances([], rng)
    for _ in range(3):
        assert tracker.update(empty).fields["track_ids"].tolist() == []
    back, _ = frame_instances([("X", 60.0, 60.0, 10.0, 2)], rng)
    assert tracker.update(back).fields["track_ids"].tolist() == [3]  # unseen for 4 frames > max_age 2; new id


def test_options_are_validated():
    with pytest.raises(ValueError, match="iou_threshold must lie in"):
        TrackerOptions(iou_threshold=1.5)
    with pytest.raises(ValueError, match="velocity_smoothing"):
        TrackerOptions(velocity_smoothing=0.0)
