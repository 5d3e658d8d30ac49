"""A `Dataset`'s images as torch training samples: `(image (3, H, W) float32 in [0, 1], Instances target)`.

Targets carry model classes: the dataset's category ids are mapped to the contiguous 1..K the model predicts
(0 is background), in the order of `Dataset.categories`. Crowd annotations (`iscrowd=1`) are left out of
training targets, as in torchvision's detection reference: Mask R-CNN has no loss for them (evaluation keeps
them, with COCO's crowd rule). Images without annotations are valid negatives: their target has zero
instances.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from instaseg.data.augment import AugmentConfig, augment
from instaseg.data.records import Dataset, ImageRecord, image_record_to_instances
from instaseg.io.images import load_image, to_tensor
from instaseg.structures.instances import Instances

Sample = tuple[torch.Tensor, Instances]


class CategoryMap:
    """Dataset category ids <-> model classes 1..K (K = number of categories), in the given order."""

    def __init__(self, category_ids: Sequence[int]):
        if len(set(category_ids)) != len(category_ids):
            raise ValueError(f"category ids must be unique; got {list(category_ids)}")
        if not category_ids:
            raise ValueError("a dataset needs at least one category to train on")
        self.category_ids = [int(c) for c in category_ids]
        if min(self.category_ids) < 0:
            raise ValueError(f"category ids must be >= 0; got {self.category_ids}")
        self._to_model = torch.full((max(self.category_ids) + 1,), -1, dtype=torch.int64)
        self._to_model[torch.tensor(self.category_ids)] = torch.arange(1, len(self.category_ids) + 1)
        self._to_dataset = torch.tensor([0, *self.category_ids], dtype=torch.int64)

    @property
    def num_classes(self) -> int:
        """Model classes including background: K + 1."""
        return len(self.category_ids) + 1

    def to_model(self, category_ids: torch.Tensor) -> torch.Tensor:
        """(N,) dataset category ids -> (N,) model classes; an unknown id raises ValueError."""
        ids = category_ids.to(torch.int64).cpu()
        known = (ids >= 0) & (ids < self._to_model.numel())
        classes = torch.full_like(ids, -1)
        classes[known] = self._to_model[ids[known]]
        if bool((classes < 0).any()):
            unknown = sorted(set(ids[classes < 0].tolist()))
            raise ValueError(
                f"category ids {unknown} are not among the training categories {self.category_ids}"
            )
        return classes.to(category_ids.device)

    def to_dataset(self, classes: torch.Tensor) -> torch.Tensor:
        """(N,) model classes 1..K -> (N,) dataset category ids."""
        return self._to_dataset.to(classes.device)[classes.to(torch.int64)]


class TrainingDataset(torch.utils.data.Dataset):
    """Loads, maps and (optionally) augments one image of `dataset` per item.

    Items are indexed by `(index, sample_seed)`: the augmentation draws from a generator seeded with
    `(seed, sample_seed)`, so a sample comes out the same whichever process or worker loads it (the training
    sampler passes each sample's position in the run's sample stream). A plain int index loads without
    augmentation.
    """

    def __init__(
        self,
        dataset: Dataset,
        categories: CategoryMap,
        augment_config: AugmentConfig | None = None,
        seed: int = 0,
    ):
        if not dataset.images:
            raise ValueError(f"the dataset with images under {dataset.root} has no images to train on")
        self.dataset = dataset
        self.categories = categories
        self.augment_config = augment_config
        self.seed = seed
        for image in dataset.images:
            _check_training_record(dataset, image, categories)

    def __len__(self) -> int:
        return len(self.dataset.images)

    def __getitem__(self, key: int | tuple[int, int]) -> Sample:
        if isinstance(key, tuple):
            index, sample_seed = key
        else:
            index, sample_seed = key, None
        image, target = self.load(index)
        if self.augment_config is not None and sample_seed is not None:
            rng = np.random.default_rng([self.seed, sample_seed])
            image, target = augment(
                image,
                target,
                self.augment_config,
                rng,
                draw_paste_source=lambda: self.load(int(rng.integers(len(self)))),
            )
        return to_tensor(image), target

    def load(self, index: int) -> tuple[np.ndarray, Instances]:
        """Image `index` as (H, W, 3) uint8 and its training target (model classes, no crowd annotations)."""
        record = self.dataset.images[index]
        path = self.dataset.image_path(record)
        image = load_image(path)
        if image.shape[:2] != (record.height, record.width):
            raise ValueError(
                f"image {path} is {image.shape[0]}x{image.shape[1]} (HxW) but its record says "
                f"{record.height}x{record.width}"
            )
        target = image_record_to_instances(record)
        target = target[target.fields["iscrowd"] == 0]
        return image, target.replace(labels=self.categories.to_model(target.labels))


def collate(batch: list[Sample]) -> tuple[list[torch.Tensor], list[Instances]]:
    """Lists of images and targets (images keep their own sizes; the model batches them)."""
    images, targets = zip(*batch, strict=True)
    return list(images), list(targets)


def _check_training_record(dataset: Dataset, image: ImageRecord, categories: CategoryMap) -> None:
    """Fail before training starts, naming the image and annotation, on what the model would reject later."""
    known = set(categories.category_ids)
    for annotation in image.annotations:
        where = f"{dataset.image_path(image)}: annotation {annotation.id}"
        if annotation.category_id not in known:
            raise ValueError(f"{where}: category id {annotation.category_id} is not a training category")
        if not annotation.iscrowd and (annotation.bbox[2] <= 0 or annotation.bbox[3] <= 0):
            raise ValueError(
                f"{where}: bbox {list(annotation.bbox)} has zero width or height; Mask R-CNN "
                "needs boxes of positive size (fix the bbox or remove the annotation)"
            )
