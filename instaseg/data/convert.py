"""Convert a supported dataset format to COCO instances JSON, with a summary of what was read and skipped."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from instaseg.data.coco import read_coco, write_coco
from instaseg.data.coco_panoptic import read_coco_panoptic
from instaseg.data.label_maps import read_label_maps
from instaseg.data.label_studio import read_label_studio
from instaseg.data.mask_folders import read_mask_folders
from instaseg.data.records import Dataset, SkipReport
from instaseg.data.semantic_maps import read_semantic_label_maps
from instaseg.data.yolo import read_yolo

__all__ = ["SOURCE_FORMATS", "ConvertSummary", "convert", "format_convert_summary", "read_dataset"]

SOURCE_FORMATS = (
    "coco",
    "mask-folders",
    "label-maps",
    "yolo",
    "label-studio",
    "coco-panoptic",
    "semantic-label-maps",
)


@dataclass
class ConvertSummary:
    """What `convert` read and wrote: counts per category and every skipped record with its reason."""

    source_format: str
    source: Path
    output: Path
    num_images: int
    num_annotations: int
    instances_per_category: dict[str, int]
    skipped: list[SkipReport]


def read_dataset(
    source_format: str,
    source: str | Path,
    *,
    strict: bool = False,
    decode_images: bool = True,
    image_root: str | Path | None = None,
    category_name: str | None = None,
    workers: int | None = None,
    images_dir: str | None = None,
    masks_dir: str | None = None,
    mask_suffix: str | None = None,
    categories: str | Path | None = None,
    ignore_index: int | None = None,
) -> Dataset:
    """Read `source` in one of `SOURCE_FORMATS`. Options a format does not use must stay None.

    - coco: `source` is the JSON file; `image_root` (default: the JSON's folder).
    - mask-folders: `source` is the folder of `<id>/` samples; `category_name`, `workers`.
    - label-maps: `source` is the root; `images_dir`, `masks_dir`, `mask_suffix`, `category_name`.
    - yolo: `source` is the root with `images/`, `labels/` and `classes.txt` or `data.yaml`.
    - label-studio: `source` is a Label Studio JSON export; `image_root` (default: the JSON's folder).
    - coco-panoptic: `source` is the panoptic JSON (its PNGs in the folder of the same name); `image_root`
      (default: the JSON's folder). Segments become instance annotations; categories keep `isthing`. Always
      strict: a bad PNG or segment stops the conversion, naming it.
    - semantic-label-maps: `source` is the root; `images_dir`, `masks_dir`, `mask_suffix`, `ignore_index`
      (void, default 0), and `categories` (a JSON file) or `category_name` (comma-separated names of the
      ids 1, 2, ...). See `instaseg.data.semantic_maps`.
    """
    given = {
        "image_root": image_root,
        "category_name": category_name,
        "workers": workers,
        "images_dir": images_dir,
        "masks_dir": masks_dir,
        "mask_suffix": mask_suffix,
        "categories": categories,
        "ignore_index": ignore_index,
    }
    used = {
        "coco": {"image_root"},
        "mask-folders": {"category_name", "workers"},
        "label-maps": {"category_name", "images_dir", "masks_dir", "mask_suffix"},
        "yolo": set(),
        "label-studio": {"image_root"},
        "coco-panoptic": {"image_root"},
        "semantic-label-maps": {
            "categories",
            "category_name",
            "ignore_index",
            "images_dir",
            "masks_dir",
            "mask_suffix",
        },
    }
    if source_format not in used:
        raise ValueError(
            f"unknown source format {source_format!r}; expected one of {', '.join(SOURCE_FORMATS)}"
        )
    unused = [name for name, value in given.items() if value is not None and name not in used[source_format]]
    if unused:
        raise ValueError(f"option(s) {', '.join(unused)} do not apply to the {source_format} format")
    options = {name: value for name, value in given.items() if value is not None}
    common = {"strict": strict, "decode_images": decode_images}
    if source_format == "coco":
        return read_coco(source, options.get("image_root"), check_images=True, **common)
    if source_format == "mask-folders":
        return read_mask_folders(source, **options, **common)
    if source_format == "label-maps":
        return read_label_maps(source, **options, **common)
    if source_format == "label-studio":
        return read_label_studio(source, options.get("image_root"), **common)
    if source_format == "coco-panoptic":
        return read_coco_panoptic(source, image_root=options.get("image_root"))
    if source_format == "semantic-label-maps":
        names = options.pop("category_name", None)
        category_names = None if names is None else names.split(",")
        return read_semantic_label_maps(source, category_names=category_names, **options, **common)
    return read_yolo(source, **common)


def convert(
    source_format: str,
    source: str | Path,
    output: str | Path,
    *,
    strict: bool = False,
    decode_images: bool = True,
    image_root: str | Path | None = None,
    category_name: str | None = None,
    workers: int | None = None,
    images_dir: str | None = None,
    masks_dir: str | None = None,
    mask_suffix: str | None = None,
    categories: str | Path | None = None,
    ignore_index: int | None = None,
) -> ConvertSummary:
    """Read `source` (see `read_dataset` for the formats and options) and write it as COCO JSON to `output`.

    Image `file_name`s in the output are relative to the output's folder. With `strict`, the first bad record
    raises `DatasetError` and nothing is written; otherwise bad records are skipped and listed in the summary.
    """
    dataset = read_dataset(
        source_format,
        source,
        strict=strict,
        decode_images=decode_images,
        image_root=image_root,
        category_name=category_name,
        workers=workers,
        images_dir=images_dir,
        masks_dir=masks_dir,
        mask_suffix=mask_suffix,
        categories=categories,
        ignore_index=ignore_index,
    )
    output = Path(output)
    write_coco(dataset, output)
    return ConvertSummary(
        source_format=source_format,
        source=Path(source),
        output=output,
        num_images=len(dataset.images),
        num_annotations=dataset.num_annotations,
        instances_per_category=dataset.instances_per_category(),
        skipped=dataset.skipped,
    )


def format_convert_summary(summary: ConvertSummary) -> str:
    """The summary as printable lines: totals, instances per class, then every skipped record."""
    lines = [
        f"converted {summary.source} ({summary.source_format}) -> {summary.output}",
        f"images: {summary.num_images}",
        f"instances: {summary.num_annotations}",
    ]
    lines += [f"  {name}: {count}" for name, count in summary.instances_per_category.items()]
    lines.append(f"skipped: {len(summary.skipped)}")
    lines += [f"  {report}" for report in summary.skipped]
    return "\n".join(lines)
