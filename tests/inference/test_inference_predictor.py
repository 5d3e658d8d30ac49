"""Predictor: image sources and conversions, category mapping, batching, and loading every model source."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from instaseg.inference.postprocess import PostprocessOptions
from instaseg.inference.predictor import Predictor
from instaseg.io.images import ImageReadError
from instaseg.models import OperatingPoint, WeightsError, build, save_weights

DISCS = [(20.0, 30.0, 8.0), (40.0, 70.0, 10.0)]


def test_paths_arrays_and_pil_images_agree(tmp_path, make_segmenter, make_disc_image):
    image = make_disc_image(60, 100, DISCS)
    Image.fromarray(image).save(tmp_path / "scene.png")
    predictor = Predictor(make_segmenter(), tiling=None)
    results = [
        predictor.predict(source) for source in (tmp_path / "scene.png", image, Image.fromarray(image))
    ]
    assert len(results[0]) == 2
    for other in results[1:]:
        assert torch.equal(other.boxes, results[0].boxes)
        assert torch.equal(other.masks.bitmaps(), results[0].masks.bitmaps())


def test_exif_orientation_grayscale_rgba_and_16_bit(tmp_path, make_segmenter, make_disc_image):
    image = make_disc_image(60, 100, DISCS)
    predictor = Predictor(make_segmenter(), tiling=None)
    upright = predictor.predict(image)
    # Stored rotated, with EXIF orientation 6 (rotate 90 degrees clockwise to display): the upright scene.
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(np.rot90(image, k=1).copy()).save(tmp_path / "rotated.jpg", exif=exif, quality=95)
    rotated = predictor.predict(tmp_path / "rotated.jpg")
    assert rotated.image_size == (60, 100)
    assert torch.allclose(rotated.boxes, upright.boxes, atol=2)
    gray = image[:, :, 0]
    Image.fromarray(gray).save(tmp_path / "gray.png")
    Image.fromarray(np.dstack([image, np.full(gray.shape, 7, np.uint8)])).save(tmp_path / "rgba.png")
    Image.fromarray(gray.astype(np.uint16) * 257).save(tmp_path / "deep.png")  # 16-bit: kept as value >> 8
    for name in ("gray.png", "rgba.png", "deep.png"):
        result = predictor.predict(tmp_path / name)
        assert torch.equal(result.boxes, upright.boxes), name


def test_categories_map_model_classes_to_dataset_ids(make_segmenter, make_disc_image):
    image = make_disc_image(60, 100, DISCS)
    categories = [{"id": 10, "name": "speck"}, {"id": 20, "name": "nucleus"}]
    predictor = Predictor(make_segmenter(label=2), tiling=None, categories=categories)
    assert predictor.predict(image).labels.tolist() == [20, 20]
    assert predictor.class_names == {10: "speck", 20: "nucleus"}
    too_few = Predictor(make_segmenter(label=3), tiling=None, categories=categories)
    with pytest.raises(ValueError, match="predicted class 3, but only 2 categories are known"):
        too_few.predict(image)
    assert Predictor(make_segmenter(label=3), tiling=None).predict(image).labels.tolist() == [3, 3]


def test_batches_give_the_same_results(make_segmenter, make_disc_image):
    images = [make_disc_image(60, 100, DISCS[:k]) for k in (1, 2, 0)]
    model = make_segmenter()
    batched = Predictor(model, tiling=None, batch_size=2).predict_batch(images)
    assert model.calls == [2, 1]
    single = [Predictor(make_segmenter(), tiling=None).predict(image) for image in images]
    assert [len(r) for r in batched] == [1, 2, 0]
    for a, b in zip(batched, single, strict=True):
        assert torch.equal(a.boxes, b.boxes) and torch.equal(a.scores, b.scores)


def test_batches_only_join_images_that_pad_to_the_same_size(tiny_model_checkpoint) -> None:
    generator = torch.Generator().manual_seed(0)
    # The tiny model resizes to 64 px: 64x64 pads to 64x64, 40x90 (-> 28x64) to 32x64.
    images = [torch.rand(3, *size, generator=generator) for size in [(64, 64), (40, 90), (64, 64)]]
    batched_predictor = Predictor(tiny_model_checkpoint, tiling=None, batch_size=3)
    calls = []
    detect = batched_predictor.model.detect
    batched_predictor.model.detect = lambda images, *options: (
        calls.append(len(images)) or detect(images, *options)
    )
    batched = batched_predictor.predict_tensors(images)
    assert calls == [2, 1]
    single = Predictor(tiny_model_checkpoint, tiling=None)
    for image, result in zip(images, batched, strict=True):
        alone = single.predict_tensors([image])[0]
        assert len(result) == len(alone) > 0
        torch.testing.assert_close(result.boxes, alone.boxes)
        torch.testing.assert_close(result.scores, alone.scores)


def test_postprocess_options_are_applied(make_segmenter, make_disc_image):
    image = make_disc_image(60, 100, DISCS)
    assert (
        len(
            Predictor(
                make_segmenter(), tiling=None, postprocess=PostprocessOptions(max_detections=1)
            ).predict(image)
        )
        == 1
    )
    strict = Predictor(make_segmenter(), tiling=None, postprocess=PostprocessOptions(score_threshold=1.0))
    assert len(strict.predict(image)) == 0


def test_unreadable_image_names_the_file(tmp_path, make_segmenter):
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(ImageReadError, match=r"empty\.png: the file is empty"):
        Predictor(make_segmenter()).predict(tmp_path / "empty.png")


def small_model():
    return build(
        "maskrcnn_resnet18_fpn",
        num_classes=3,
        min_size=128,
        max_size=160,
        rpn_pre_nms_top_n_test=200,
        rpn_post_nms_top_n_test=50,
        box_detections_per_img=20,
    )


def test_instaseg_checkpoint_with_categories(tmp_path, dsb_root, dsb_image_ids):
    torch.manual_seed(0)
    model = small_model()
    categories = [{"id": 5, "name": "nucleus"}, {"id": 9, "name": "debris"}]
    model.categories = categories
    save_weights(model, tmp_path / "model.pt")
    predictor = Predictor(tmp_path / "model.pt", postprocess=PostprocessOptions(score_threshold=0.0))
    assert predictor.class_names == {5: "nucleus", 9: "debris"}
    image_id = dsb_image_ids[0]
    path = dsb_root / image_id / "images" / f"{image_id}.png"
    result = predictor.predict(path)
    height, width = np.asarray(Image.open(path)).shape[:2]
    assert result.image_size == (height, width)
    assert 0 < len(result) <= 20
    assert set(result.labels.tolist()) <= {5, 9}
    assert (result.boxes[:, 0::2] <= width).all() and (result.boxes[:, 1::2] <= height).all()
    assert torch.all(result.scores[:-1] >= result.scores[1:])
    assert result.masks.bitmaps().shape == (len(result), height, width)
    # The same weights as a module give the same result: with its categories, or model classes without.
    direct = Predictor(model, postprocess=PostprocessOptions(score_threshold=0.0)).predict(path)
    assert torch.equal(direct.boxes, result.boxes) and torch.equal(direct.labels, result.labels)
    model.categories = None
    unnamed = Predictor(model, postprocess=PostprocessOptions(score_threshold=0.0)).predict(path)
    assert torch.equal(torch.tensor([0, 5, 9])[unnamed.labels], result.labels)


def test_torchvision_state_dict_gets_coco_names(tmp_path):
    state = build("maskrcnn_resnet50_fpn").state_dict()
    torch.save(state, tmp_path / "maskrcnn_coco.pth")
    predictor = Predictor(tmp_path / "maskrcnn_coco.pth")
    assert len(predictor.categories) == 90
    assert predictor.class_names[1] == "person" and predictor.class_names[90] == "toothbrush"
    assert torch.equal(
        predictor.model.state_dict()["roi_heads.box_predictor.cls_score.weight"],
        state["roi_heads.box_predictor.cls_score.weight"],
    )


def test_bad_model_sources(tmp_path, make_segmenter):
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no usable CUDA device"):
            Predictor(make_segmenter(), device="cuda")
    with pytest.raises(FileNotFoundError, match="neither a file nor a model name"):
        Predictor(tmp_path / "nothing.pt")
    torch.save({"weights": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(WeightsError, match="neither an instaseg model file"):
        Predictor(tmp_path / "other.pt")
    (tmp_path / "broken.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="broken.pt: cannot read weights"):
        Predictor(tmp_path / "broken.pt")


def test_unset_thresholds_come_from_the_models_operating_point(make_segmenter, make_disc_image):
    image = make_disc_image(60, 100, DISCS)
    model = make_segmenter()
    every = Predictor(model, tiling=None).predict(image)
    assert len(every) == 2 and float(every.scores.min()) < 0.99
    model.operating_point = OperatingPoint(score_threshold=float(every.scores.max()), mask_threshold=0.6)
    predictor = Predictor(model, tiling=None)
    assert (predictor.postprocess_options.score_threshold, predictor.postprocess_options.mask_threshold) == (
        float(every.scores.max()),
        0.6,
    )
    assert len(predictor.predict(image)) == 1
    # A threshold the user sets wins over the operating point.
    explicit = Predictor(model, tiling=None, postprocess=PostprocessOptions(score_threshold=0.05))
    assert len(explicit.predict(image)) == 2 and explicit.postprocess_options.mask_threshold == 0.6


def test_thresholds_without_an_operating_point_keep_every_detection():
    assert PostprocessOptions().resolved(None) == PostprocessOptions(score_threshold=0.05, mask_threshold=0.5)
