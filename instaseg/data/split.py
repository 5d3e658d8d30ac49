"""Reproducible train / validation split of a COCO dataset: whole images, with their annotations.

An image goes to validation when its key `sha256("<seed>:<image id>")` is among the `round(n * fraction)`
smallest. The split depends only on the seed and the image ids: not on the order of the input, nor on the
platform, and raising the fraction only moves more images into validation.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, replace
from pathlib import Path

from instaseg.data.coco import read_coco, write_coco
from instaseg.data.records import Dataset, ImageRecord, SkipReport

__all__ = ["SplitSummary", "format_split_summary", "split", "split_dataset"]


@dataclass
class SplitSummary:
    """What `split` wrote: image and instance counts of each part, and what the reader skipped."""

    source: Path
    out_train: Path
    out_val: Path
    seed: int
    val_fraction: float
    train_images: int
    val_images: int
    train_instances: dict[str, int]
    val_instances: dict[str, int]
    skipped: list[SkipReport]


def split_dataset(dataset: Dataset, val_fraction: float, seed: int) -> tuple[Dataset, Dataset]:
    """(train, val): the images of `dataset` split by the seeded hash rule, each part sorted by id.

    Both parts keep all categories, the root and the other top-level keys. With at least 2 images, each part
    gets at least one. Raises `ValueError` for a fraction outside (0, 1) or fewer than 2 images.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be between 0 and 1 (exclusive), got {val_fraction}")
    if len(dataset.images) < 2:
        raise ValueError(f"cannot split {len(dataset.images)} image(s) into two non-empty parts")
    ranked = sorted(dataset.images, key=lambda image: _split_key(seed, image))
    num_val = min(max(round(len(ranked) * val_fraction), 1), len(ranked) - 1)
    val_ids = {image.id for image in ranked[:num_val]}
    # Sorted by id (annotations too) so that the written files do not depend on the input order either.
    by_id = [
        replace(image, annotations=sorted(image.annotations, key=lambda annotation: annotation.id))
        for image in sorted(dataset.images, key=lambda image: image.id)
    ]
    train = [image for image in by_id if image.id not in val_ids]
    val = [image for image in by_id if image.id in val_ids]
    return _part(dataset, train), _part(dataset, val)


def split(
    gt_path: str | Path,
    out_train: str | Path,
    out_val: str | Path,
    *,
    val_fraction: float = 0.15,
    seed: int = 0,
    strict: bool = False,
) -> SplitSummary:
    """Split the COCO file `gt_path` into two COCO files (written atomically), and summarise.

    Only the JSON is read (image files are not opened). Bad records of the input are skipped and listed in
    the summary, or raise `DatasetError` when `strict`. Image `file_name`s are rewritten relative to each
    output's folder, so the outputs may live anywhere.
    """
    gt_path, out_train, out_val = Path(gt_path), Path(out_train), Path(out_val)
    paths = [os.path.abspath(p) for p in (gt_path, out_train, out_val)]
    if len(set(paths)) != 3:
        raise ValueError(f"the input {gt_path}, --out-train {out_train} and --out-val {out_val} must differ")
    dataset = read_coco(gt_path, strict=strict, check_images=False)
    train, val = split_dataset(dataset, val_fraction, seed)
    for out in (out_train, out_val):  # a folder that cannot exist fails here, before either file is replaced
        out.parent.mkdir(parents=True, exist_ok=True)
    write_coco(train, out_train)
    write_coco(val, out_val)
    return SplitSummary(
        source=gt_path,
        out_train=out_train,
        out_val=out_val,
        seed=seed,
        val_fraction=val_fraction,
        train_images=len(train.images),
        val_images=len(val.images),
        train_instances=train.instances_per_category(),
        val_instances=val.instances_per_category(),
        skipped=dataset.skipped,
    )


def format_split_summary(summary: SplitSummary) -> str:
    """The summary as printable lines: per part its images and instances per class, then every skip."""
    lines = [f"split {summary.source} (val fraction {summary.val_fraction:g}, seed {summary.seed})"]
    for label, path, images, instances in (
        ("train", summary.out_train, summary.train_images, summary.train_instances),
        ("val", summary.out_val, summary.val_images, summary.val_instances),
    ):
        lines.append(f"{label}: {images} images, {sum(instances.values())} instances -> {path}")
        lines += [f"  {name}: {count}" for name, count in instances.items()]
    lines.append(f"skipped: {len(summary.skipped)}")
    lines += [f"  {report}" for report in summary.skipped]
    return "\n".join(lines)


def _split_key(seed: int, image: ImageRecord) -> bytes:
    # A hash of (seed, id) rather than random.Random(seed).shuffle: an image's rank then depends on nothing
    # but its own id, never on the input order (and sha256, unlike hash(), is the same in every process).
    return hashlib.sha256(f"{seed}:{image.id}".encode()).digest()


def _part(dataset: Dataset, images: list[ImageRecord]) -> Dataset:
    return Dataset(images, list(dataset.categories), dataset.root, [], dict(dataset.extra))
