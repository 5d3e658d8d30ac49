"""Reading the datasets a training config names, with what the reader skipped reported, never hidden."""

from __future__ import annotations

import sys
from pathlib import Path

from instaseg.data.convert import read_dataset as read_format
from instaseg.data.records import Dataset
from instaseg.engine.config import DatasetConfig

# How many skipped records to print before summarising the rest as a count.
SKIPPED_SHOWN = 10


def read_dataset(config: DatasetConfig, role: str, report: bool = True) -> Dataset:
    """The dataset `config` describes (`role` is "train" or "val", for messages).

    Raises `ValueError` for a dataset without images. With `report`, skipped records are printed to stderr.
    """
    path = Path(config.path)
    dataset = read_format(
        config.format,
        path,
        strict=config.strict,
        decode_images=config.decode_images,
        image_root=config.image_root,
        category_name=config.category_name,
        images_dir=config.images_dir,
        masks_dir=config.masks_dir,
        mask_suffix=config.mask_suffix,
    )
    if not dataset.images:
        raise ValueError(f"{role} dataset {path} has no usable images (skipped: {len(dataset.skipped)})")
    if report and dataset.skipped:
        print(f"{role} dataset {path}: skipped {len(dataset.skipped)} bad record(s):", file=sys.stderr)
        for skipped in dataset.skipped[:SKIPPED_SHOWN]:
            print(f"  {skipped}", file=sys.stderr)
        if len(dataset.skipped) > SKIPPED_SHOWN:
            print(f"  ... and {len(dataset.skipped) - SKIPPED_SHOWN} more", file=sys.stderr)
    return dataset
