"""Automatic mask generation: parity of `exact` mode with segment-anything's generator (fixture `amg` cases),
the grid / crop geometry, the small-region clean-up, the record format and `fast` mode's gap filling."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from instaseg.models.sam import mobile_sam
from instaseg.models.sam.automatic_masks import (
    AutomaticMaskGenerator,
    AutomaticMaskSettings,
    _clean_regions,
    build_point_grid,
    crop_boxes,
    sam_records,
    uncovered_points,
)
from instaseg.models.sam.predictor import SamPredictor
from instaseg.structures.mask_crops import MaskCrop
from instaseg.structures.masks import decode_rle

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "models"))
from test_sam_parity import fixture, image_case  # noqa: E402  (the fixture models, built once)


def amg_image(cases: dict, amg: dict) -> np.ndarray:
    image = image_case(cases, "nuclei")["image_uint8_hwc"].numpy()
    if amg["image_name"] == "nuclei_t":
        image = np.ascontiguousarray(image.transpose(1, 0, 2))
    return image


def match_records(found: list[dict], reference: list[dict]) -> tuple[int, int, dict[str, float]]:
    """One-to-one matches by (point_coords, crop_box) and mask IoU > 0.98: (matched, in order, worst)."""
    by_key: dict[tuple, list[int]] = {}
    for i, record in enumerate(reference):
        by_key.setdefault(
            (tuple(np.round(record["point_coords"][0], 6)), tuple(record["crop_box"])), []
        ).append(i)
    used: set[int] = set()
    matched = in_order = 0
    worst = {"predicted_iou": 0.0, "stability_score": 0.0, "bbox": 0.0, "area": 0.0}
    for j, record in enumerate(found):
        mask = decode_rle([record["segmentation"]])[0]
        for i in by_key.get((tuple(np.round(record["point_coords"][0], 6)), tuple(record["crop_box"])), []):
            other = decode_rle([reference[i]["segmentation"]])[0]
            if i in used or (mask & other).sum() <= 0.98 * max((mask | other).sum(), 1):
                continue
            used.add(i)
            matched += 1
            in_order += i == j
            ref = reference[i]
            for key in ("predicted_iou", "stability_score"):
                worst[key] = max(worst[key], abs(ref[key] - record[key]))
            worst["bbox"] = max(
                worst["bbox"], max(abs(a - b) for a, b in zip(ref["bbox"], record["bbox"], strict=True))
            )
            worst["area"] = max(worst["area"], abs(ref["area"] - record["area"]) / ref["area"])
            break
    return matched, in_order, worst


@pytest.mark.slow
@pytest.mark.parametrize("name", ["sam_small", "mobile_sam"])
@pytest.mark.parametrize("case", [0, 1], ids=["whole-image", "with-crops"])
def test_exact_mode_reproduces_the_official_generator(fixtures_dir: Path, name: str, case: int) -> None:
    cases, predictor = fixture(fixtures_dir, name)
    amg = cases["amg"][case]
    settings = {key: value for key, value in amg["settings"].items() if key != "output_mode"}
    generator = AutomaticMaskGenerator(predictor, AutomaticMaskSettings(**settings, mode="exact"))
    found = sam_records(generator.generate(amg_image(cases, amg)))
    reference = amg["masks"]
    assert len(found) == len(reference)
    matched, in_order, worst = match_records(found, reference)
    assert matched == len(reference)
    assert in_order == len(reference)
    assert worst["predicted_iou"] <= 1e-3 and worst["stability_score"] <= 1e-3
    assert worst["bbox"] <= 1 and worst["area"] <= 0.005


def test_crop_boxes_match_the_official_crops(fixtures_dir: Path) -> None:
    cases = torch.load(fixtures_dir / "sam" / "sam_small_cases.pt")
    amg = cases["amg"][1]  # nuclei_t, 696 x 520, one crop layer
    settings = amg["settings"]
    boxes = crop_boxes((696, 520), settings["crop_n_layers"], settings["crop_overlap_ratio"])
    assert [layer for _, layer in boxes] == [0, 1, 1, 1, 1]
    as_xywh = [[x1, y1, x2 - x1, y2 - y1] for (x1, y1, x2, y2), _ in boxes]
    used = {tuple(record["crop_box"]) for record in amg["masks"]}
    assert used <= {tuple(box) for box in as_xywh}
    assert len(used) > 1  # the reference keeps masks of several crops


def test_point_grid_is_row_major_cell_centres() -> None:
    grid = build_point_grid(2)
    np.testing.assert_allclose(grid, [[0.25, 0.25], [0.75, 0.25], [0.25, 0.75], [0.75, 0.75]])


def test_small_regions_fill_holes_and_remove_islands() -> None:
    mask = np.zeros((20, 20), dtype=bool)
    mask[2:12, 2:12] = True
    mask[5, 5] = False  # a one-pixel hole
    mask[17, 17] = True  # a one-pixel island
    cleaned, changed = _clean_regions(mask, min_area=4)
    assert changed
    assert cleaned[5, 5] and not cleaned[17, 17]
    assert cleaned.sum() == 100
    same, changed = _clean_regions(cleaned, min_area=4)
    assert not changed and np.array_equal(same, cleaned)


def test_settings_are_validated() -> None:
    with pytest.raises(ValueError, match="points_per_side"):
        AutomaticMaskSettings(points_per_side=0)
    with pytest.raises(ValueError, match="pred_iou_thresh"):
        AutomaticMaskSettings(pred_iou_thresh=1.5)
    with pytest.raises(ValueError, match="mode"):
        AutomaticMaskSettings(mode="quick")


class StoredEmbedding(SamPredictor):
    """A predictor whose `set_image` installs a stored embedding instead of encoding (decoder-only tests)."""

    def __init__(self, model, embedding: torch.Tensor, input_size: tuple[int, int]) -> None:
        super().__init__(model)
        self.stored = embedding
        self.stored_input_size = input_size

    def set_image(self, image) -> None:
        self.set_embedding(self.stored, image.shape[:2], self.stored_input_size)


def test_uncovered_points_are_the_gaps_between_masks() -> None:
    points = np.array([[5.5, 5.5], [15.5, 5.5], [5.5, 15.5], [19.9, 19.9]])
    masks = [MaskCrop(12, 13, np.ones((4, 4), dtype=bool)), MaskCrop(10, 12, np.ones((3, 3), dtype=bool))]
    # Crop (10, 10)-(30, 30) of the image: mask 1 covers crop pixels x 3..6, y 2..5; mask 2 x 2..4, y 0..2.
    gaps = uncovered_points(points, masks, [10, 10, 30, 30], (20, 20))
    np.testing.assert_array_equal(gaps, points[1:])
    masks.append(MaskCrop(24, 24, np.ones((6, 6), dtype=bool)))  # covers crop pixel (19, 19)
    np.testing.assert_array_equal(uncovered_points(points, masks, [10, 10, 30, 30], (20, 20)), points[1:3])


@pytest.mark.slow
def test_fast_mode_decodes_the_coarse_grid_then_only_the_gaps(fixtures_dir: Path) -> None:
    cases, predictor = fixture(fixtures_dir, "mobile_sam")
    case = image_case(cases, "nuclei")
    stored = StoredEmbedding(predictor.model, case["image_embedding"].float(), case["input_size"])
    decode_where = stored.model.decode_where
    calls: list[int] = []

    def counting(embedding, points, **kwargs):
        calls.append(len(points[0]))
        return decode_where(embedding, points, **kwargs)

    stored.model.decode_where = counting
    try:
        settings = AutomaticMaskSettings(
            points_per_side=12, pred_iou_thresh=0.7, stability_score_thresh=0.6, mode="fast"
        )
        found = AutomaticMaskGenerator(stored, settings).generate(case["image_uint8_hwc"].numpy())
    finally:
        del stored.model.decode_where
    assert (
        calls[0] == 36
    )  # the coarse 6 x 6 grid first, then only the points of the 12 x 12 grid left uncovered
    assert len(found) > 0 and sum(calls[1:]) < 144
    torch.testing.assert_close(found.masks.boxes(), found.boxes)  # tight boxes, x2/y2 exclusive


def test_records_use_the_official_bbox_convention() -> None:
    """Official `bbox` widths are last column - first column; Instances boxes are exclusive (one more)."""
    predictor = StoredEmbedding(mobile_sam(), torch.zeros(1, 256, 64, 64), (683, 1024))
    generator = AutomaticMaskGenerator(
        predictor, AutomaticMaskSettings(points_per_side=1, pred_iou_thresh=0.0, stability_score_thresh=0.0)
    )
    found = generator.generate(np.zeros((32, 48, 3), dtype=np.uint8))
    records = sam_records(found)
    assert len(records) == len(found) >= 1  # the three masks of one point, less NMS duplicates
    for record, box, area in zip(records, found.boxes.tolist(), found.masks.area().tolist(), strict=True):
        if area:
            assert record["bbox"][2] == box[2] - box[0] - 1
        assert record["area"] == area
        assert record["point_coords"] == [[24.0, 16.0]]
        assert record["crop_box"] == [0, 0, 48, 32]


def test_everything_model_follows_the_segmentation_protocol() -> None:
    from instaseg.models.protocol import DetectOptions, SegmentationModel
    from instaseg.models.sam import is_sam_checkpoint
    from instaseg.models.sam.automatic_masks import SamEverythingModel

    torch.manual_seed(0)
    predictor = StoredEmbedding(mobile_sam(), torch.randn(1, 256, 64, 64), (683, 1024))
    model = SamEverythingModel(
        predictor, AutomaticMaskSettings(points_per_side=2, pred_iou_thresh=0.0, stability_score_thresh=0.0)
    )
    assert isinstance(model, SegmentationModel)
    assert model.summary() == {"family": "sam", "backbone": "vit_t", "num_classes": 2, "mode": "exact"}
    image = torch.rand(3, 32, 48)
    (found,) = model.detect([image])
    assert found.image_size == (32, 48) and (found.labels == 1).all()
    assert torch.equal(found.scores, found.scores.sort(descending=True).values)
    (capped,) = model.detect([image], DetectOptions(max_detections=1))
    assert len(capped) == 1 and capped.scores[0] == found.scores[0]
    (strict,) = model.detect([image], DetectOptions(score_threshold=float(found.scores.max())))
    assert len(strict) == 0
    with pytest.raises(ValueError, match="input_scale must be 1"):
        model.detect([image], DetectOptions(input_scale=0.5))
    assert is_sam_checkpoint({"model": predictor.model.state_dict()})
    assert not is_sam_checkpoint({"backbone.body.conv1.weight": torch.zeros(1)})
