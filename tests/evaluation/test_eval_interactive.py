"""Interactive metrics on hand-made cases: the simulated user's clicks, the click curves, NoC, box IoU."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from instaseg.evaluation.interactive import (
    box_prompt_ious,
    mask_ious,
    number_of_clicks,
    simulate_clicks,
    summarize,
)
from instaseg.models.promptable.prompt_simulation import Click, error_region_click
from instaseg.structures.instances import Instances
from instaseg.structures.masks import Masks

SIZE = 40


def square(x1: int, y1: int, x2: int, y2: int) -> np.ndarray:
    mask = np.zeros((SIZE, SIZE), dtype=bool)
    mask[y1:y2, x1:x2] = True
    return mask


class ScriptedSegmenter:
    """Answers each prompt with the object its first click lies in, as `script(object, clicks)` says:
    the mask after that many clicks. Multimask answers are three masks with scores (0.2, 0.9, 0.5)."""

    def __init__(self, truths: np.ndarray, script) -> None:
        self.truths = truths
        self.script = script
        self.calls: list[dict] = []

    def set_image(self, image) -> None:
        self.image = image

    def predict(self, points=None, labels=None, boxes=None, mask_input=None, multimask=True) -> Instances:
        self.calls.append(
            {"points": points, "labels": labels, "mask_input": mask_input, "multimask": multimask}
        )
        if boxes is not None:
            masks = [self.script(None, boxes[i]) for i in range(len(boxes))]
            scores = [1.0] * len(masks)
        else:
            masks, scores = [], []
            for prompt, label_row in zip(points, labels, strict=True):
                x, y = prompt[0].astype(int)
                index = int(np.nonzero(self.truths[:, y, x])[0][0])
                answer = self.script(index, (prompt, label_row))
                if multimask:
                    masks += [np.zeros((SIZE, SIZE), dtype=bool), answer, np.ones((SIZE, SIZE), dtype=bool)]
                    scores += [0.2, 0.9, 0.5]
                else:
                    masks.append(answer)
                    scores.append(0.7)
        bitmaps = torch.from_numpy(np.stack(masks))
        count = len(bitmaps)
        return Instances(
            (SIZE, SIZE),
            torch.zeros(count, 4),
            torch.ones(count, dtype=torch.int64),
            torch.tensor(scores),
            Masks.from_bitmaps(bitmaps),
            low_res_logits=bitmaps.float()[:, ::4, ::4],
        )


TRUTHS = np.stack([square(2, 2, 12, 12), square(20, 20, 36, 30)])


def test_first_click_is_the_object_centre_and_corrections_follow_the_largest_error():
    truth = square(2, 2, 13, 13)  # 11x11: centre pixel (7, 7)
    assert error_region_click(np.zeros_like(truth), truth) == Click(7, 7, True)
    # a prediction covering the object and a larger wrong block: the click is negative, in the block
    prediction = truth | square(20, 5, 35, 35)
    click = error_region_click(prediction, truth)
    assert click is not None and not click.positive
    assert 20 <= click.x < 35 and 5 <= click.y < 35
    # half the object missed: positive, inside the missed half
    click = error_region_click(square(2, 2, 13, 7), truth)
    assert click.positive and 7 <= click.y < 13
    assert error_region_click(truth, truth) is None
    with pytest.raises(ValueError, match="shape"):
        error_region_click(truth[:5], truth)


def _click_on_the_whole_image(prediction: np.ndarray, truth: np.ndarray) -> Click | None:
    """The definition, without the bounding-box crop: distance transforms over the whole padded image."""

    def inner(region):
        padded = np.pad(region.astype(np.uint8), 1)
        return cv2.distanceTransform(padded, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)[1:-1, 1:-1]

    tie = 1e-3  # float32 rounding of a distance differs between a crop and the whole image, and by CPU
    missed, wrong = inner(truth & ~prediction), inner(prediction & ~truth)
    if missed.max() == 0 and wrong.max() == 0:
        return None
    positive = missed.max() >= wrong.max() - tie
    region = missed if positive else wrong
    y, x = np.unravel_index(int(np.argmax(region >= region.max() - tie)), truth.shape)
    return Click(int(x), int(y), bool(positive))


def test_the_cropped_distance_transform_clicks_where_the_whole_image_one_does():
    rng = np.random.default_rng(0)
    for _ in range(200):
        height, width = (int(v) for v in rng.integers(5, 90, 2))
        truth, prediction = np.zeros((height, width), np.uint8), np.zeros((height, width), np.uint8)
        for _ in range(int(rng.integers(0, 4))):  # discs, some cut by the image border
            centre = (int(rng.integers(-5, width + 5)), int(rng.integers(-5, height + 5)))
            cv2.circle(truth, centre, int(rng.integers(1, 25)), 1, -1)
        for _ in range(int(rng.integers(0, 4))):
            centre = (int(rng.integers(0, width)), int(rng.integers(0, height)))
            axes = (int(rng.integers(1, 25)), int(rng.integers(1, 15)))
            cv2.ellipse(prediction, centre, axes, 0, 0, 360, 1, -1)
        truth, prediction = truth.astype(bool), prediction.astype(bool)
        assert error_region_click(prediction, truth) == _click_on_the_whole_image(prediction, truth)


def test_a_perfect_model_needs_one_click():
    segmenter = ScriptedSegmenter(TRUTHS, lambda index, _: TRUTHS[index])
    ious = simulate_clicks(segmenter, TRUTHS, max_clicks=20)
    np.testing.assert_array_equal(ious, np.ones((2, 20)))
    metrics = summarize(ious, np.array([1.0, 0.5]))
    assert metrics["mIoU@1"] == 1.0 and metrics["NoC@85"] == 1.0 and metrics["NoC@90"] == 1.0
    assert metrics["box_mIoU"] == 0.75 and metrics["objects"] == 2
    # first call: multimask (the highest-scoring of the three is kept), one positive click per object
    first = segmenter.calls[0]
    assert first["multimask"] and first["mask_input"] is None
    np.testing.assert_array_equal(first["labels"], [[1.0], [1.0]])


def test_a_model_right_after_three_clicks_and_a_model_never_right():
    def third_click(index, prompt):
        points, _ = prompt
        return TRUTHS[index] if len(points) >= 3 else np.zeros((SIZE, SIZE), dtype=bool)

    segmenter = ScriptedSegmenter(TRUTHS, third_click)
    ious = simulate_clicks(segmenter, TRUTHS, max_clicks=20)
    np.testing.assert_array_equal(ious[:, :3], [[0, 0, 1], [0, 0, 1]])
    metrics = summarize(ious, np.zeros(2))
    assert metrics["mIoU@1"] == 0.0 and metrics["mIoU@3"] == 1.0 and metrics["mIoU@5"] == 1.0
    assert metrics["NoC@85"] == 3.0 and metrics["NoC@90"] == 3.0
    # later calls: single mask, previous low-res logits fed back, three clicks per object at the third
    assert not segmenter.calls[2]["multimask"] and segmenter.calls[2]["mask_input"].shape == (2, 1, 10, 10)
    assert segmenter.calls[2]["points"].shape == (2, 3, 2)

    never = ScriptedSegmenter(TRUTHS, lambda index, _: np.zeros((SIZE, SIZE), dtype=bool))
    ious = simulate_clicks(never, TRUTHS, max_clicks=20)
    assert len(never.calls) == 20 and ious.max() == 0.0
    metrics = summarize(ious, np.zeros(2))
    assert metrics["NoC@85"] == 20.0 and metrics["NoC@90"] == 20.0 and metrics["mIoU@5"] == 0.0


def test_a_too_large_mask_gets_a_negative_click():
    grown = np.stack([square(0, 0, 20, 20), square(18, 18, 40, 36)])

    def shrink_on_negative(index, prompt):
        _, labels = prompt
        return TRUTHS[index] if (np.asarray(labels) == 0).any() else grown[index]

    segmenter = ScriptedSegmenter(TRUTHS, shrink_on_negative)
    ious = simulate_clicks(segmenter, TRUTHS, max_clicks=6)
    np.testing.assert_allclose(ious[:, 0], mask_ious(grown, TRUTHS))
    np.testing.assert_array_equal(ious[:, 1:], np.ones((2, 5)))
    np.testing.assert_array_equal(segmenter.calls[1]["labels"][:, 1], [0.0, 0.0])


def test_objects_stop_after_five_clicks_once_above_090():
    segmenter = ScriptedSegmenter(
        TRUTHS, lambda index, _: TRUTHS[index] if index == 0 else square(20, 20, 35, 30)
    )
    ious = simulate_clicks(segmenter, TRUTHS, max_clicks=20)
    assert ious[1, 0] == pytest.approx(150 / 160)  # 0.9375 >= 0.9: stops after click 5
    assert len(segmenter.calls) == 5
    np.testing.assert_allclose(ious[1], 150 / 160)


def test_number_of_clicks_counts_the_first_click_reaching_the_threshold():
    curves = np.array([[0.5, 0.86, 0.95], [0.91, 0.5, 0.5], [0.1, 0.2, 0.3]])
    np.testing.assert_array_equal(number_of_clicks(curves, 0.85, max_clicks=20), [2, 1, 20])
    np.testing.assert_array_equal(number_of_clicks(curves, 0.90, max_clicks=20), [3, 1, 20])


def test_box_prompts_use_tight_boxes():
    disc = np.zeros((1, SIZE, SIZE), dtype=bool)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    disc[0] = (yy - 20) ** 2 + (xx - 15) ** 2 <= 36

    seen = []

    def fill_box(_, box):
        seen.append(np.asarray(box, dtype=float))
        x1, y1, x2, y2 = seen[-1].astype(int)
        return square(x1, y1, x2, y2)

    ious = box_prompt_ious(ScriptedSegmenter(disc, fill_box), disc)
    np.testing.assert_array_equal(seen, [[9, 14, 22, 27]])  # x2 / y2 exclusive
    np.testing.assert_allclose(ious, [disc.sum() / 169])


def test_eval_prompts_command_scores_a_promptable_model_file(tmp_path, capsys):
    import json

    from instaseg.cli.main import main
    from instaseg.data.synthetic import make_synthetic_dataset
    from instaseg.models.promptable import PromptableConfig, build_promptable, promptable_model_file

    gt = make_synthetic_dataset(tmp_path / "data", 2, size_range=(48, 64), max_instances=2, seed=4)
    annotations = [a for a in json.loads(gt.read_text())["annotations"] if not a.get("iscrowd")]
    torch.manual_seed(0)
    model = build_promptable(PromptableConfig(image_size=64))
    promptable_model_file(model, {}).save(tmp_path / "promptable.pt")
    out = tmp_path / "metrics.json"
    args = ["eval-prompts", "--gt", str(gt), "--model", str(tmp_path / "promptable.pt"), "--out", str(out)]
    assert main([*args, "--max-clicks", "3", "--threads", "1"]) == 0
    metrics = json.loads(out.read_text())
    assert metrics["objects"] == len(annotations) and metrics["images"] == 2 and metrics["max_clicks"] == 3
    for key in ("mIoU@1", "mIoU@3", "box_mIoU"):
        assert 0.0 <= metrics[key] <= 1.0
    assert 1.0 <= metrics["NoC@85"] <= 3.0 and "mIoU@5" not in metrics
    assert f"{metrics['images']} images, {len(annotations)} objects" in capsys.readouterr().out

    assert main([*args, "--max-clicks", "0"]) == 2
    assert "--max-clicks must be >= 1" in capsys.readouterr().err
    assert main(["eval-prompts", "--gt", str(gt), "--model", str(tmp_path / "missing.pt")]) == 2
    assert "missing.pt' is neither a file" in capsys.readouterr().err
