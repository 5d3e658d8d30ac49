"""Training Panoptic FPN through the ordinary loop: a dataset with stuff categories (isthing: 0) gives the
Mask R-CNN its semantic head, things come first in the class order, and the model file predicts both."""

from __future__ import annotations

import json

import pytest
import torch

from instaseg.data.synthetic import make_synthetic_dataset
from instaseg.engine.config import ConfigError, config_from_dict
from instaseg.engine.metrics_log import read_metrics
from instaseg.engine.trainer import train
from instaseg.inference.predictor import Predictor
from instaseg.models import load_model


def config(root, name="maskrcnn_resnet18_fpn"):
    train_json = make_synthetic_dataset(root / "train", 3, size_range=(64, 80), max_instances=2, stuff=True)
    val_json = make_synthetic_dataset(root / "val", 2, size_range=(64, 80), seed=1, stuff=True)
    settings = {"min_size": 64, "max_size": 80, "fpn_channels": 32, "semantic_head_channels": 32}
    settings.update(rpn_pre_nms_top_n_test=50, rpn_post_nms_top_n_test=25, box_detections_per_img=20)
    return config_from_dict(
        {
            "output_dir": str(root / "run"),
            "data": {"train": {"path": str(train_json)}, "val": {"path": str(val_json)}},
            "model": {"name": name, "settings": settings if name.startswith("maskrcnn") else {}},
            "optim": {"lr": 0.005, "grad_clip_norm": 5.0},
            "schedule": {"iterations": 2, "warmup_iterations": 1},
            "train": {"batch_size": 1, "log_period": 1, "eval_period": 2, "device": "cpu"},
        }
    )


def test_stuff_categories_train_a_semantic_head(tmp_path):
    torch.set_num_threads(1)
    categories = json.loads((make_synthetic_dataset(tmp_path / "probe", 1, stuff=True)).read_text())[
        "categories"
    ]
    assert [c["isthing"] for c in categories] == [1, 1, 0, 0]
    result = train(config(tmp_path))
    records = [r for r in read_metrics(result.run_dir / "metrics.jsonl") if r["kind"] == "train"]
    assert all("loss_sem_seg" in r and r["loss_sem_seg"] > 0 for r in records)
    (evaluation,) = [r for r in read_metrics(result.run_dir / "metrics.jsonl") if r["kind"] == "eval"]
    assert -1.0 <= evaluation["pq_PQ"] <= 1.0 and "segm_AP" in evaluation
    model = load_model(result.run_dir / "last.pt")
    assert model.num_box_classes == 3 and model.num_stuff == 2 and model.num_classes == 5
    assert [c["id"] for c in model.categories] == [1, 2, 3, 4]  # things, then stuff
    image = torch.rand(3, 64, 72)
    prediction = Predictor(model, tiling=None).predict_tensors([image])[0]
    stuff = prediction[~prediction.fields["isthing"]]
    assert set(stuff.labels.tolist()) <= {3, 4} and len(stuff) >= 1  # dataset ids of the stuff categories


def test_stuff_categories_are_refused_by_families_without_a_semantic_head(tmp_path):
    with pytest.raises(ConfigError, match="stuff categories .* only Mask R-CNN's semantic head"):
        train(config(tmp_path, name="condinst_efficientnet_lite0"))


def test_the_trainers_panoptic_quality_is_one_for_perfect_predictions(tmp_path):
    from instaseg.data.coco import read_coco
    from instaseg.data.torch_dataset import CategoryMap
    from instaseg.engine.distributed import DistributedContext
    from instaseg.engine.evaluator import Evaluator

    dataset = read_coco(make_synthetic_dataset(tmp_path / "val", 2, size_range=(64, 80), seed=3, stuff=True))
    context = DistributedContext(0, 1, 0, torch.device("cpu"))
    evaluator = Evaluator(dataset, CategoryMap([1, 2, 3, 4]), tmp_path / "gt.json", 100, context)
    gt = evaluator.ground_truth()
    perfect = [
        {
            "image_id": a["image_id"],
            "category_id": a["category_id"],
            "segmentation": a["segmentation"],
            "bbox": a["bbox"],
            "score": 1.0,
        }
        for a in gt["annotations"]
    ]
    metrics = evaluator.score(perfect)
    assert metrics["pq_PQ"] == pytest.approx(1.0) and metrics["segm_AP"] == pytest.approx(1.0)
    assert evaluator.score(perfect[1:])["pq_PQ"] < 1.0


def test_the_trainers_panoptic_quality_splits_things_and_stuff(tmp_path):
    """Perfect things, no stuff regions predicted: Things PQ 1, Stuff PQ 0 (false negatives), All between."""
    from instaseg.data.coco import read_coco
    from instaseg.data.torch_dataset import CategoryMap
    from instaseg.engine.distributed import DistributedContext
    from instaseg.engine.evaluator import Evaluator

    dataset = read_coco(make_synthetic_dataset(tmp_path / "val", 2, size_range=(64, 80), seed=3, stuff=True))
    context = DistributedContext(0, 1, 0, torch.device("cpu"))
    evaluator = Evaluator(dataset, CategoryMap([1, 2, 3, 4]), tmp_path / "gt.json", 100, context)
    gt = evaluator.ground_truth()
    stuff = {c["id"] for c in gt["categories"] if c["isthing"] == 0}
    things_only = [
        {"image_id": a["image_id"], "category_id": a["category_id"], "segmentation": a["segmentation"]}
        | {"bbox": a["bbox"], "score": 1.0}
        for a in gt["annotations"]
        if a["category_id"] not in stuff
    ]
    metrics = evaluator.score(things_only)
    assert metrics["pq_things_PQ"] == pytest.approx(1.0) and metrics["pq_things_SQ"] == pytest.approx(1.0)
    assert metrics["pq_stuff_PQ"] == 0.0 and metrics["pq_stuff_RQ"] == 0.0
    assert 0.0 < metrics["pq_PQ"] < 1.0
    assert evaluator.score([])["pq_stuff_PQ"] == -1.0
