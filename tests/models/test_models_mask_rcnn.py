"""The eval-mode output contract of MaskRCNN on a batch of differently sized images."""

from __future__ import annotations

import torch

from instaseg.models import build
from instaseg.models.protocol import MASK_THRESHOLD
from instaseg.ops import paste_masks_in_image


def test_batch_of_different_sizes_gives_one_instances_per_image_in_its_own_pixels() -> None:
    torch.manual_seed(0)
    model = build("maskrcnn_resnet18_fpn", num_classes=4, min_size=64, max_size=96, box_score_thresh=0.0)
    images = [torch.rand(3, 50, 70), torch.rand(3, 40, 40)]
    with torch.no_grad():
        outputs = model(images)
    assert len(outputs) == 2
    for image, instances in zip(images, outputs, strict=True):
        height, width = image.shape[-2:]
        assert instances.image_size == (height, width)
        assert len(instances) == 100  # every class score is > 0.0, so the detection cap is reached
        assert torch.all(instances.scores[:-1] >= instances.scores[1:])
        assert instances.labels.min() >= 1 and instances.labels.max() <= 3
        boxes = instances.boxes
        assert boxes.min() >= 0 and (boxes[:, 2] <= width).all() and (boxes[:, 3] <= height).all()
        assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
        logits = instances.fields["mask_logits"]
        assert logits.shape == (100, 28, 28)
        # The bitmaps are the field's logits, as probabilities, pasted into the boxes and thresholded at
        # MASK_THRESHOLD: what lets `postprocess` keep them as they are at that threshold.
        probabilities = paste_masks_in_image(logits.sigmoid()[:, None], boxes, (height, width))[:, 0]
        assert torch.equal(instances.masks.bitmaps(), probabilities > MASK_THRESHOLD)


def test_no_detections_gives_empty_instances_with_the_image_size() -> None:
    torch.manual_seed(0)
    model = build("maskrcnn_resnet18_fpn", num_classes=4, min_size=64, max_size=96, box_score_thresh=0.999)
    with torch.no_grad():
        (instances,) = model([torch.rand(3, 50, 70)])
    assert len(instances) == 0 and instances.image_size == (50, 70)
    assert instances.masks.bitmaps().shape == (0, 50, 70)
    assert instances.fields["mask_logits"].shape == (0, 28, 28)
