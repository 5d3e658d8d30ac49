"""The bundled detector's own masks as answers to a click or a box, next to the promptable model (issue 17).

A baseline for the interactive metrics: for each ground-truth nucleus of the first `--max-images` images of
`--gt`, the first simulated click (the object's centre, as `instaseg.evaluation.interactive`) is answered
with the highest-scoring detector mask under that pixel (IoU 0 where no mask covers it), and the tight
box with the mask of the detection whose box overlaps it most (box IoU). The promptable model is scored on
the same objects with `evaluate_prompts` (1 click: multimask, best predicted IoU; box: one mask). A
promptable model that does not beat this baseline adds nothing over the detector for a user who clicks
once.

    .venv/bin/python benchmarks/bench_detector_as_prompt.py --gt runs/nuclei/val.json [--max-images 25] \
        [--detector nuclei_maskrcnn] [--promptable nuclei_promptable]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from instaseg.data.coco import read_coco
from instaseg.data.records import image_record_to_instances
from instaseg.evaluation.interactive import evaluate_prompts, mask_ious
from instaseg.io.images import load_image, to_tensor
from instaseg.models import load_model, load_promptable
from instaseg.models.promptable.prompt_simulation import error_region_click
from instaseg.models.protocol import DetectOptions, SegmentationModel
from instaseg.models.sam.predictor import SamPredictor
from instaseg.structures.boxes import box_iou, mask_boxes

EVERY_DETECTION = DetectOptions(score_threshold=0.05, max_detections=1000)


def detector_answers(
    detector: SegmentationModel, image: torch.Tensor, truths: np.ndarray
) -> tuple[np.ndarray, np.ndarray, int]:
    """`(B, H, W)` truths -> IoU of the detector's answer to each object's first click and to its box
    `(B,)` each, and how many clicks fell on no detected mask."""
    with torch.inference_mode():
        found = detector.detect([image], EVERY_DETECTION)[0]
    masks = found.masks.bitmaps().cpu().numpy().astype(bool)
    if len(masks) == 0:
        return np.zeros(len(truths)), np.zeros(len(truths)), len(truths)
    scores = found.scores.cpu().numpy()
    clicked = []
    for truth in truths:
        click = error_region_click(np.zeros_like(truth), truth)
        under = np.flatnonzero(masks[:, click.y, click.x])
        clicked.append(under[np.argmax(scores[under])] if len(under) else -1)
    clicked = np.array(clicked)
    answers = np.where(clicked[:, None, None] >= 0, masks[np.maximum(clicked, 0)], False)
    overlaps = box_iou(mask_boxes(torch.from_numpy(truths)), found.boxes.float().cpu())
    boxed = masks[overlaps.argmax(dim=1).numpy()]
    return mask_ious(answers, truths), mask_ious(boxed, truths), int((clicked < 0).sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gt", required=True, help="COCO ground truth (file names relative to its folder)")
    parser.add_argument("--max-images", type=int, default=25)
    parser.add_argument("--detector", default=None, help="detector model (default: the bundled one)")
    parser.add_argument("--promptable", default=None, help="promptable model (default: the bundled one)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dataset = read_coco(args.gt, decode_images=False)
    detector = load_model(args.detector).eval()
    click_ious, box_ious, missed = [], [], 0
    for record in dataset.images[: args.max_images]:
        target = image_record_to_instances(record)
        truths = target[target.fields["iscrowd"] == 0].masks.bitmaps().cpu().numpy().astype(bool)
        truths = truths[truths.reshape(len(truths), -1).any(axis=1)]
        if len(truths) == 0:
            continue
        image = to_tensor(load_image(dataset.image_path(record)))
        clicks, boxes, misses = detector_answers(detector, image, truths)
        click_ious.append(clicks)
        box_ious.append(boxes)
        missed += misses
    promptable = SamPredictor(load_promptable(args.promptable))
    metrics = evaluate_prompts(promptable, args.gt, max_images=args.max_images, max_clicks=1)
    objects = sum(len(ious) for ious in click_ious)
    print(f"{args.max_images} images of {args.gt}, {objects} objects\n")
    print("| answer | 1-click mIoU | box mIoU |\n|---|---|---|")
    print(f"| promptable model | {metrics['mIoU@1']:.3f} | {metrics['box_mIoU']:.3f} |")
    detector_row = f"{np.concatenate(click_ious).mean():.3f} | {np.concatenate(box_ious).mean():.3f}"
    print(f"| detector's mask under the click / best-matching box | {detector_row} |")
    print(f"\n{missed} of {objects} clicks fell on no detected mask (IoU 0)")


if __name__ == "__main__":
    main()
