"""rank_images: order by each method, budgets, bad pools, models without the needed capability, outputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from instaseg.active.export import export_selection, write_ranking
from instaseg.active.ranking import Method, RankOptions, rank_images
from instaseg.active.uncertainty import MissingCapabilityError
from instaseg.data.coco import read_coco
from instaseg.data.label_studio import read_label_studio
from instaseg.inference.predictor import Predictor
from instaseg.models.loading import load_model
from instaseg.models.protocol import DEFAULT_DETECT_OPTIONS, DetectOptions
from instaseg.structures.instances import Instances
from instaseg.structures.masks import Masks


class ScoreModel:
    """A `SegmentationModel` whose detections are set by the image's brightness: an image of grey level g
    gets `SCORES[g]` (one 4x4 object per score), so each test image's uncertainty is known in advance."""

    SCORES = {10: [0.95, 0.97], 20: [0.5, 0.55], 30: [0.9, 0.6, 0.8] * 10, 40: []}
    categories = [{"id": 7, "name": "cell"}]
    operating_point = None

    @property
    def num_classes(self) -> int:
        return 2

    def summary(self) -> dict[str, object]:
        return {"family": "test", "backbone": "none", "num_classes": 2}

    def batch_key(self, image_size: tuple[int, int], options: DetectOptions) -> tuple[int, int]:
        return image_size

    def to(self, device: object) -> ScoreModel:
        return self

    def eval(self) -> ScoreModel:
        return self

    def detect(self, images: list[torch.Tensor], options: DetectOptions = DEFAULT_DETECT_OPTIONS) -> list:
        outputs = []
        for image in images:
            scores = self.SCORES[round(float(image.mean()) * 255)]
            count = len(scores)
            size = (image.shape[-2], image.shape[-1])
            bitmaps = torch.zeros((count, *size), dtype=torch.bool)
            bitmaps[:, 2:6, 2:6] = True
            outputs.append(
                Instances(
                    size,
                    torch.tensor([[2.0, 2.0, 6.0, 6.0]] * count).reshape(count, 4),
                    torch.ones(count, dtype=torch.int64),
                    torch.tensor(scores, dtype=torch.float32),
                    Masks.from_bitmaps(bitmaps),
                    mask_logits=torch.zeros((count, 28, 28)),
                )
            )
        return outputs


class FeatureScoreModel(ScoreModel):
    """ScoreModel with pooled features: the grey level picks one of two directions, so grey10 and grey20
    look alike, and grey30 and grey40 look alike."""

    def image_features(self, images: list[torch.Tensor]) -> torch.Tensor:
        levels = [round(float(image.mean()) * 255) for image in images]
        return torch.tensor([[1.0, 0.01 * level] if level <= 20 else [0.01 * level, 1.0] for level in levels])


@pytest.fixture
def pool(tmp_path: Path) -> Path:
    folder = tmp_path / "pool"
    folder.mkdir()
    for level in ScoreModel.SCORES:
        Image.fromarray(np.full((16, 16, 3), level, dtype=np.uint8)).save(folder / f"grey{level}.png")
    return folder


def test_mean_uncertainty_puts_the_unsure_and_the_empty_images_first(pool: Path) -> None:
    ranking = rank_images([pool], ScoreModel(), "mean-uncertainty", budget=2)
    names = [image.path.name for image in ranking.images]
    # grey40 has no detection (uncertainty 1), grey20 scores ~0.5, grey30 is crowded but fairly sure.
    assert names == ["grey40.png", "grey20.png", "grey30.png", "grey10.png"]
    assert [image.rank for image in ranking.images] == [1, 2, 3, 4]
    assert [image.selected for image in ranking.images] == [True, True, False, False]
    assert ranking.images[2].components["detections"] == 30.0


def test_random_is_reproducible_and_depends_on_the_seed(pool: Path) -> None:
    def order(seed: int) -> list[str]:
        ranking = rank_images([pool], ScoreModel(), Method.RANDOM, 4, RankOptions(seed=seed))
        return [image.path.name for image in ranking.images]

    assert order(0) == order(0)
    assert {tuple(order(seed)) for seed in range(6)} != {tuple(order(0))}


def test_a_budget_larger_than_the_pool_is_refused(pool: Path) -> None:
    with pytest.raises(ValueError, match="budget 5 is larger than the pool of 4"):
        rank_images([pool], ScoreModel(), "mean-uncertainty", budget=5)
    with pytest.raises(ValueError, match="budget must be a positive"):
        rank_images([pool], ScoreModel(), "mean-uncertainty", budget=0)


def test_an_empty_folder_is_refused_naming_it(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"no images to rank .*empty: folder holds no image files"):
        rank_images([tmp_path / "empty"], ScoreModel(), "mean-uncertainty", budget=1)


def test_a_model_without_features_is_refused_for_coreset(pool: Path) -> None:
    for method in ("coreset", "hybrid"):
        with pytest.raises(MissingCapabilityError, match=r"ScoreModel\) has no image_features"):
            rank_images([pool], ScoreModel(), method, budget=1)


def test_coreset_starts_away_from_the_labelled_images(pool: Path) -> None:
    ranking = rank_images([pool], FeatureScoreModel(), "coreset", budget=2, labelled=[pool / "grey10.png"])
    first = ranking.images[0].path.name
    assert first in ("grey30.png", "grey40.png")  # the other direction than the labelled grey10
    assert ranking.images[-1].path.name == "grey10.png"
    assert ranking.images[-1].score == pytest.approx(0.0, abs=1e-9)
    assert ranking.images[0].score == ranking.images[0].components["coreset_distance"]


def test_hybrid_picks_diverse_images_from_the_uncertainty_shortlist(pool: Path) -> None:
    # Budget 1, shortlist 2: the two most uncertain (grey40: no detection, grey20: scores near 0.5); the
    # others follow by uncertainty with score 0.
    ranking = rank_images([pool], FeatureScoreModel(), "hybrid", 1, RankOptions(shortlist_factor=2))
    names = [image.path.name for image in ranking.images]
    assert set(names[:2]) == {"grey40.png", "grey20.png"}
    assert names[2:] == ["grey30.png", "grey10.png"]
    assert [image.score for image in ranking.images[2:]] == [0.0, 0.0]


def test_an_unreadable_image_is_listed_not_ranked(pool: Path) -> None:
    (pool / "broken.png").write_bytes(b"not a png")
    ranking = rank_images([pool], ScoreModel(), "max-uncertainty", budget=4)
    assert [f.source for f in ranking.failures] == [str(pool / "broken.png")]
    assert len(ranking.images) == 4
    with pytest.raises(ValueError, match=r"pool of 4 readable image\(s\) \(1 input\(s\) gave no image\)"):
        rank_images([pool], ScoreModel(), "max-uncertainty", budget=5)


def test_ranking_files_list_every_image_with_its_components(pool: Path, tmp_path: Path) -> None:
    ranking = rank_images([pool], ScoreModel(), "mask-uncertainty", budget=1)
    write_ranking(ranking, tmp_path)
    rows = (tmp_path / "ranking.csv").read_text().splitlines()
    assert rows[0].split(",")[:4] == ["rank", "path", "score", "selected"]
    assert len(rows) == 5
    data = json.loads((tmp_path / "ranking.json").read_text())
    assert data["method"] == "mask-uncertainty" and data["budget"] == 1 and data["pool"] == 4
    assert data["images"][0]["components"]["mask_entropy"] == pytest.approx(1.0)


def test_pre_annotations_round_trip_through_cvat_and_label_studio_files(pool: Path, tmp_path: Path) -> None:
    model = ScoreModel()
    ranking = rank_images([pool], model, "mean-uncertainty", budget=3)
    out = tmp_path / "out"
    export_selection(ranking, Predictor(model, tiling=None), out, sheet_size=3)
    sheet = np.asarray(Image.open(out / "contact_sheet.png"))
    assert sheet.ndim == 3 and sheet.shape[2] == 3
    # The selected images in rank order; the model's operating point is absent, so scores >= 0.05 are kept.
    cvat = read_coco(out / "cvat" / "instances_default.json", image_root=pool, strict=True)
    assert [image.file_name for image in cvat.images] == ["grey40.png", "grey20.png", "grey30.png"]
    assert [len(image.annotations) for image in cvat.images] == [0, 2, 30]
    assert [(c.id, c.name) for c in cvat.categories] == [(7, "cell")]
    tasks = json.loads((out / "label_studio" / "tasks.json").read_text())
    assert tasks[1]["data"]["image"] == "/data/local-files/?d=grey20.png"
    # Label Studio keeps predictions apart from annotations: make them the annotation, as an annotator who
    # accepts the draft would, and read the export back.
    for task_id, task in enumerate(tasks, start=1):
        task["id"] = task_id
        task["annotations"] = [{"id": task_id, "result": task["predictions"][0]["result"]}]
    exported = tmp_path / "export.json"
    exported.write_text(json.dumps(tasks))
    back = read_label_studio(exported, image_root=pool, strict=True)
    for original, read in zip(cvat.images, back.images, strict=True):
        assert read.file_name == original.file_name
        assert [a.segmentation for a in read.annotations] == [a.segmentation for a in original.annotations]


@pytest.mark.slow
@pytest.mark.parametrize("method", ["coreset", "hybrid", "tta-disagreement"])
def test_methods_run_on_a_real_model(method: str, tiny_model_checkpoint: Path, tmp_path: Path) -> None:
    pool = tmp_path / "pool"
    pool.mkdir()
    generator = np.random.default_rng(0)
    for index in range(5):
        Image.fromarray(generator.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(pool / f"{index}.png")
    model = load_model(tiny_model_checkpoint)
    ranking = rank_images([pool], model, method, budget=2, labelled=[pool / "0.png"])
    assert len(ranking.images) == 5 and len(ranking.selected) == 2
    assert all(np.isfinite(image.score) for image in ranking.images)
    if method == "coreset":  # labelled image 0 is a centre at distance 0: never worth annotating first
        assert ranking.images[-1].path.name == "0.png"
        assert ranking.images[-1].score == pytest.approx(0.0, abs=1e-6)
    if method == "tta-disagreement":
        assert all(0.0 <= image.components["tta_disagreement"] <= 1.0 for image in ranking.images)


def test_image_features_are_deterministic_and_shaped(tiny_model_checkpoint: Path) -> None:
    model = load_model(tiny_model_checkpoint)
    images = [torch.rand(3, 40, 48, generator=torch.Generator().manual_seed(1))]
    with torch.inference_mode():
        first = model.image_features(images)
        second = model.image_features(images)
    assert first.shape == (1, 64)
    assert torch.equal(first, second)
