"""Modality-held-out nuclei validation (issue 15): colour (brightfield / H&E) images held out of training.

Run (after DEVELOPERS.md "Working data"): `.venv/bin/python benchmarks/make_modality_split.py [--all
runs/nuclei/all.json --train runs/nuclei/train.json --val runs/nuclei/val.json]`

An image is "colour" when its RGB channels differ (mean |R - G| + |G - B| > 1 grey level on 0..255); every
other DSB 2018 stage-1 image is grey fluorescence. In stage 1 the colour images are the 107 320x256 tissue
and brightfield acquisitions (92 in the seed-0 training split, 15 in validation). Writes, beside the inputs
(whose image paths are relative to their folder), COCO files with the inputs' categories:

- `modality_train_grey.json`: the training split without its colour images (train a model on it);
- `modality_heldout_colour.json`: every colour image of `--all` (training and validation splits), never
  seen by a model trained on `modality_train_grey.json`: the held-out-modality evaluation;
- `modality_val_grey.json` and `modality_val_colour.json`: the validation split by modality (both modalities
  seen by a model trained on the full training split, such as the bundled one).

The counts are printed; the same inputs always give the same files.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from instaseg.io.atomic import atomic_write
from instaseg.io.images import load_image

# Mean absolute channel difference (grey levels of 0..255) above which an image counts as colour.
COLOUR_THRESHOLD = 1.0


def image_file(record: dict, coco_path: Path) -> Path:
    """The image file of a COCO image record (paths are relative to the JSON file's folder)."""
    path = Path(record["file_name"])
    return path if path.is_absolute() else coco_path.parent / path


def is_colour(path: Path) -> bool:
    pixels = load_image(path).astype(np.float32)
    difference = (
        np.abs(pixels[..., 0] - pixels[..., 1]).mean() + np.abs(pixels[..., 1] - pixels[..., 2]).mean()
    )
    return float(difference) > COLOUR_THRESHOLD


def subset(coco: dict, keep: set[str]) -> dict:
    """The images of `coco` whose file_name is in `keep`, with their annotations and all categories."""
    images = [image for image in coco["images"] if image["file_name"] in keep]
    ids = {image["id"] for image in images}
    annotations = [a for a in coco["annotations"] if a["image_id"] in ids]
    return {**coco, "images": images, "annotations": annotations}


def write(coco: dict, path: Path) -> None:
    with atomic_write(path, "w") as stream:
        json.dump(coco, stream)
    print(f"{path}: {len(coco['images'])} images, {len(coco['annotations'])} objects")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--all", type=Path, default=Path("runs/nuclei/all.json"))
    parser.add_argument("--train", type=Path, default=Path("runs/nuclei/train.json"))
    parser.add_argument("--val", type=Path, default=Path("runs/nuclei/val.json"))
    args = parser.parse_args()
    everything, train, val = (json.loads(path.read_text()) for path in (args.all, args.train, args.val))
    if len({path.resolve().parent for path in (args.all, args.train, args.val)}) != 1:
        raise ValueError(
            "--all, --train and --val must lie in one folder (their image paths are relative to it)"
        )
    colour = {
        record["file_name"] for record in everything["images"] if is_colour(image_file(record, args.all))
    }
    out = args.all.parent
    grey_train = {record["file_name"] for record in train["images"]} - colour
    grey_val = {record["file_name"] for record in val["images"]} - colour
    write(subset(train, grey_train), out / "modality_train_grey.json")
    write(subset(everything, colour), out / "modality_heldout_colour.json")
    write(subset(val, grey_val), out / "modality_val_grey.json")
    write(subset(val, colour), out / "modality_val_colour.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
