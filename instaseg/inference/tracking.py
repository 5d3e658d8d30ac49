"""Track ids across video frames: IoU association with a constant-velocity motion model.

Each track remembers its last box, mask and a smoothed per-frame velocity of its box corners. For a new
frame every live track predicts where it is now (last box + velocity x frames since seen, the mask shifted by
the same amount); detections and tracks are scored by IoU against that prediction (mask IoU when both have
masks, box IoU otherwise); only pairs of the same label with IoU >= `iou_threshold` may match, and the
Hungarian algorithm picks the assignment with the largest total IoU. Unmatched detections start new tracks; a
track unmatched for more than `max_age` frames ends, and its id is never reused.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from instaseg.structures.boxes import box_iou
from instaseg.structures.instances import Instances
from instaseg.structures.masks import encode_rle, mask_iou


@dataclass(frozen=True)
class TrackerOptions:
    """How detections are linked into tracks.

    iou_threshold: the least IoU with a track's predicted box / mask for a detection to continue that track.
    max_age: frames a track may go undetected and still be continued (then its id is never reused).
    velocity_smoothing: weight of the newest motion in the exponentially smoothed velocity (1 = no smoothing).
    use_masks: associate by mask IoU when both sides have masks (better for touching objects), else box IoU.
    """

    iou_threshold: float = 0.3
    max_age: int = 5
    velocity_smoothing: float = 0.6
    use_masks: bool = True

    def __post_init__(self) -> None:
        if not 0.0 <= self.iou_threshold <= 1.0:
            raise ValueError(f"TrackerOptions.iou_threshold must lie in [0, 1], got {self.iou_threshold}")
        if self.max_age < 0:
            raise ValueError(f"TrackerOptions.max_age must be >= 0, got {self.max_age}")
        if not 0.0 < self.velocity_smoothing <= 1.0:
            raise ValueError(
                f"TrackerOptions.velocity_smoothing must lie in (0, 1], got {self.velocity_smoothing}"
            )


@dataclass
class _Track:
    track_id: int
    label: int
    box: torch.Tensor  # (4,) x1y1x2y2 where last seen
    velocity: torch.Tensor  # (4,) box-corner motion per frame
    mask: np.ndarray | None  # (H, W) bool where last seen
    frames_unseen: int = 0

    def predicted_box(self) -> torch.Tensor:
        return self.box + self.velocity * (self.frames_unseen + 1)

    def predicted_mask(self) -> np.ndarray | None:
        if self.mask is None:
            return None
        centre_motion = (self.velocity[0:2] + self.velocity[2:4]) / 2 * (self.frames_unseen + 1)
        dx, dy = (int(round(float(v))) for v in centre_motion)
        return _shift(self.mask, dy, dx)


def _shift(mask: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """`mask` moved by (dy, dx) pixels; what moves out of the frame is lost, what moves in is empty."""
    height, width = mask.shape
    out = np.zeros_like(mask)
    if abs(dy) >= height or abs(dx) >= width:
        return out
    out[max(dy, 0) : height + min(dy, 0), max(dx, 0) : width + min(dx, 0)] = mask[
        max(-dy, 0) : height + min(-dy, 0), max(-dx, 0) : width + min(-dx, 0)
    ]
    return out


class Tracker:
    """Give each detection of a frame sequence a track id that stays the same while the object is followed."""

    def __init__(self, options: TrackerOptions | None = None) -> None:
        self.options = options or TrackerOptions()
        self._tracks: list[_Track] = []
        self._next_id = 1

    def update(self, instances: Instances) -> Instances:
        """Associate one frame's detections with the live tracks.

        Returns the same instances with an extra field `track_ids` (N,) int64, ids counting from 1.
        """
        boxes = instances.boxes.detach().cpu().float()
        labels = instances.labels.detach().cpu().tolist()
        masks = None
        if self.options.use_masks and instances.masks is not None:
            masks = instances.masks.bitmaps().cpu().numpy()
        similarity = self._similarity(boxes, labels, masks)

        matched_track_of = [-1] * len(instances)
        if similarity.size:
            rows, cols = linear_sum_assignment(similarity, maximize=True)
            for t, d in zip(rows.tolist(), cols.tolist(), strict=True):
                if similarity[t, d] >= self.options.iou_threshold and similarity[t, d] > 0:
                    matched_track_of[d] = t

        known = len(self._tracks)
        track_ids = []
        for d, t in enumerate(matched_track_of):
            mask = masks[d] if masks is not None else None
            if t < 0:
                track = _Track(self._next_id, labels[d], boxes[d].clone(), torch.zeros(4), mask)
                self._next_id += 1
                self._tracks.append(track)
            else:
                track = self._tracks[t]
                step = (boxes[d] - track.box) / (track.frames_unseen + 1)
                alpha = self.options.velocity_smoothing
                track.velocity = alpha * step + (1 - alpha) * track.velocity
                track.box, track.mask, track.frames_unseen = boxes[d].clone(), mask, 0
            track_ids.append(track.track_id)
        matched = set(matched_track_of)
        for index, track in enumerate(self._tracks[:known]):
            if index not in matched:
                track.frames_unseen += 1
        self._tracks = [track for track in self._tracks if track.frames_unseen <= self.options.max_age]
        fields = dict(instances.fields)
        fields["track_ids"] = torch.tensor(track_ids, dtype=torch.int64, device=instances.boxes.device)
        return Instances(
            instances.image_size,
            instances.boxes,
            instances.labels,
            instances.scores,
            instances.masks,
            **fields,
        )

    def _similarity(self, boxes: torch.Tensor, labels: list[int], masks: np.ndarray | None) -> np.ndarray:
        """(tracks, detections) IoU against each track's prediction; 0 where the labels differ."""
        if not self._tracks or not len(boxes):
            return np.zeros((len(self._tracks), len(boxes)))
        predicted = torch.stack([track.predicted_box() for track in self._tracks])
        similarity = box_iou(predicted, boxes).numpy().astype(np.float64)
        track_masks = [track.predicted_mask() for track in self._tracks]
        if masks is not None:
            with_mask = [i for i, m in enumerate(track_masks) if m is not None]
            if with_mask:
                track_rles = encode_rle(np.stack([track_masks[i] for i in with_mask]))
                detection_rles = encode_rle(masks)
                ious = mask_iou(track_rles, detection_rles, np.zeros(len(detection_rles), dtype=bool))
                similarity[with_mask] = np.asarray(ious, dtype=np.float64).reshape(len(with_mask), len(boxes))
        same_label = np.array([[t.label == lab for lab in labels] for t in self._tracks], dtype=bool)
        return np.where(same_label, similarity, 0.0)
