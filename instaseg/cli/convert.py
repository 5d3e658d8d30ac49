"""`instaseg convert`: read a dataset (COCO, mask folders, label maps, YOLO, ...) and write COCO JSON."""

from __future__ import annotations

import argparse
from pathlib import Path

# `instaseg.data.convert.SOURCE_FORMATS`, restated so that --help needs no import of the data package
# (tests/cli/test_cli_help.py checks that the two agree).
SOURCE_FORMATS = (
    "coco",
    "mask-folders",
    "label-maps",
    "yolo",
    "label-studio",
    "coco-panoptic",
    "semantic-label-maps",
)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "convert",
        help="convert a dataset to COCO instances JSON",
        description=__doc__ + " Bad records are skipped and listed in the summary unless --strict is given.",
    )
    parser.add_argument("--from", dest="source_format", required=True, choices=SOURCE_FORMATS)
    parser.add_argument(
        "source", type=Path, metavar="SRC", help="COCO JSON file, or the dataset's root folder"
    )
    parser.add_argument("--to", dest="target_format", required=True, choices=("coco",))
    parser.add_argument("output", type=Path, metavar="OUT.json", help="where to write the COCO JSON")
    parser.add_argument("--strict", action="store_true", help="stop at the first bad record (exit code 2)")
    parser.add_argument(
        "--no-decode",
        dest="decode_images",
        action="store_false",
        help="read only image headers: faster, but a truncated image is not noticed",
    )
    parser.add_argument("--image-root", type=Path, help="coco: folder of the images (default: the JSON's)")
    parser.add_argument(
        "--category-name",
        help="mask-folders, label-maps: name of the single category (default: object); semantic-label-maps: "
        "comma-separated names of the class ids 1, 2, ... (stuff categories)",
    )
    parser.add_argument(
        "--categories",
        type=Path,
        help="semantic-label-maps: JSON list of COCO categories (id = class value, name, isthing; absent "
        "isthing: stuff), or a COCO file with one; instead of --category-name",
    )
    parser.add_argument(
        "--ignore-index",
        type=int,
        help="semantic-label-maps: class-map value of void pixels, left unannotated (default 0)",
    )
    parser.add_argument("--workers", type=int, help="mask-folders: reader processes (default: 1)")
    parser.add_argument(
        "--images-dir",
        help="label-maps, semantic-label-maps: image folder (default: PNGImages; semantic: images)",
    )
    parser.add_argument(
        "--masks-dir",
        help="label-maps, semantic-label-maps: label-map folder (default: PedMasks; semantic: labels)",
    )
    parser.add_argument(
        "--mask-suffix",
        help="label-maps, semantic-label-maps: map name = image stem + this + .png (default: _mask; "
        "semantic: none)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from instaseg.data.convert import convert, format_convert_summary

    summary = convert(
        args.source_format,
        args.source,
        args.output,
        strict=args.strict,
        decode_images=args.decode_images,
        image_root=args.image_root,
        category_name=args.category_name,
        workers=args.workers,
        images_dir=args.images_dir,
        masks_dir=args.masks_dir,
        mask_suffix=args.mask_suffix,
        categories=args.categories,
        ignore_index=args.ignore_index,
    )
    print(format_convert_summary(summary))
    return 0
