"""Training samples from dataset records: label mapping, crowd handling, negatives, seeded augmentation."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

from instaseg.data.augment import AugmentConfig
from instaseg.data.coco import read_coco
from instaseg.data.synthetic import make_synthetic_dataset
from instaseg.data.torch_dataset import CategoryMap, TrainingDataset, collate


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    return read_coco(make_synthetic_dataset(root, 4, max_instances=3, num_negatives=1, seed=7))


def test_category_map_round_trip_and_unknown_ids():
    categories = CategoryMap([7, 3, 12])
    assert categories.num_classes == 4
    assert categories.to_model(torch.tensor([3, 12, 7])).tolist() == [2, 3, 1]
    assert categories.to_dataset(torch.tensor([2, 3, 1])).tolist() == [3, 12, 7]
    with pytest.raises(ValueError, match=r"category ids \[5, 99\] are not among"):
        categories.to_model(torch.tensor([5, 99, 3]))
    with pytest.raises(ValueError, match="unique"):
        CategoryMap([1, 1])
    with pytest.raises(ValueError, match="at least one category"):
        CategoryMap([])


def test_samples_are_images_and_model_targets(dataset):
    data = TrainingDataset(dataset, CategoryMap([c.id for c in dataset.categories]))
    image, target = data[0]
    record = dataset.images[0]
    assert image.dtype == torch.float32 and image.shape == (3, record.height, record.width)
    assert float(image.min()) >= 0.0 and float(image.max()) <= 1.0
    assert target.image_size == (record.height, record.width)
    assert target.labels.tolist() == [a.category_id for a in record.annotations]  # ids 1, 2 -> classes 1, 2
    assert target.masks.area().tolist() == [a.area for a in record.annotations]
    negative_image, negative = data[len(data) - 1]
    assert len(negative) == 0 and negative.image_size == tuple(negative_image.shape[1:])
    images, targets = collate([data[0], data[1]])
    assert len(images) == len(targets) == 2 and targets[1].image_size == tuple(images[1].shape[1:])


def test_crowd_annotations_are_left_out_of_training_targets(dataset):
    crowded = dataclasses.replace(dataset, images=[dataclasses.replace(dataset.images[0])])
    first = crowded.images[0]
    first.annotations = [dataclasses.replace(a) for a in first.annotations]
    first.annotations[0].iscrowd = 1
    _, target = TrainingDataset(crowded, CategoryMap([1, 2]))[0]
    assert len(target) == len(first.annotations) - 1


def test_augmentation_depends_only_on_the_sample_seed(dataset):
    config = AugmentConfig(hflip=0.5, crop_size=(48, 48), brightness=0.3)
    data = TrainingDataset(dataset, CategoryMap([1, 2]), config, seed=1)
    first_image, first = data[(0, 17)]
    again_image, again = data[(0, 17)]
    assert first_image.shape == (3, 48, 48)
    torch.testing.assert_close(first_image, again_image)
    torch.testing.assert_close(first.boxes, again.boxes)
    others = [data[(0, seed)][0] for seed in range(18, 24)]
    assert any(not torch.equal(first_image, other) for other in others)
    plain_image, _ = data[0]  # a plain index: no augmentation
    assert plain_image.shape[1:] == (dataset.images[0].height, dataset.images[0].width)


def test_records_that_training_cannot_use_are_named(dataset, tmp_path):
    bad_box = dataclasses.replace(dataset, images=[dataclasses.replace(dataset.images[0])])
    record = bad_box.images[0]
    record.annotations = [dataclasses.replace(record.annotations[0], bbox=(3.0, 4.0, 0.0, 5.0))]
    with pytest.raises(ValueError, match=r"annotation \d+: bbox .* has zero width or height"):
        TrainingDataset(bad_box, CategoryMap([1, 2]))
    with pytest.raises(ValueError, match="is not a training category"):
        TrainingDataset(dataset, CategoryMap([1]))
    with pytest.raises(ValueError, match="has no images to train on"):
        TrainingDataset(dataclasses.replace(dataset, images=[]), CategoryMap([1, 2]))
    # An image file whose size differs from its record: named when loaded.
    resized = dataclasses.replace(dataset, root=tmp_path)
    record = resized.images[0]
    (tmp_path / record.file_name).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((10, 12, 3), dtype=np.uint8)).save(tmp_path / record.file_name)
    with pytest.raises(ValueError, match=rf"{record.file_name} is 10x12 \(HxW\) but its record says"):
        TrainingDataset(resized, CategoryMap([1, 2]))[0]


def test_synthetic_dataset_is_reproducible(tmp_path):
    first = read_coco(make_synthetic_dataset(tmp_path / "a", 3, seed=5))
    second = read_coco(make_synthetic_dataset(tmp_path / "b", 3, seed=5))
    assert [i.annotations for i in first.images] == [i.annotations for i in second.images]
    for a, b in zip(first.images, second.images, strict=True):
        assert (tmp_path / "a" / a.file_name).read_bytes() == (tmp_path / "b" / b.file_name).read_bytes()
    with pytest.raises(ValueError, match="num_negatives"):
        make_synthetic_dataset(tmp_path / "c", 2, num_negatives=3)
