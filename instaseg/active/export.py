"""What `instaseg rank` writes: the ranking, a contact sheet, and pre-annotations for CVAT and Label Studio.

In the output folder:
- `ranking.csv` / `ranking.json`: every pool image, best first: `rank`, `path`, `score`, `selected` (within
  the budget) and the per-image components; the JSON adds the method, budget and the inputs that failed;
- `contact_sheet.png`: the first selected images with the model's predictions drawn on, captioned
  "#rank score name";
- `cvat/instances_default.json`: the selected images' predictions as COCO instances (compressed RLE masks,
  a `score` per annotation) for CVAT's "COCO 1.0" annotation import; `file_name`s are relative to the image
  root, as the images are named in the CVAT task;
- `label_studio/tasks.json`: one task per selected image with the predictions as pre-annotations (brush RLE
  or polygons, `instaseg.data.label_studio`), and `label_studio/label_config.xml`, the labelling interface.

Pre-annotations are what `instaseg predict` gives (the model's operating point: a first draft to correct,
not the low-score candidates the ranking looked at).
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from instaseg.active.contact_sheet import contact_sheet
from instaseg.active.ranking import Ranking
from instaseg.data.coco import write_coco
from instaseg.data.label_studio import label_config, tasks_from_dataset, write_label_studio_tasks
from instaseg.data.records import AnnotationRecord, CategoryRecord, Dataset, ImageRecord
from instaseg.inference.outputs import encode_png, ensure_writable_folder, write_bytes, write_json
from instaseg.inference.predictor import Predictor
from instaseg.io.images import load_image
from instaseg.structures.instances import Instances

RANKING_CSV = "ranking.csv"
RANKING_JSON = "ranking.json"
CONTACT_SHEET = "contact_sheet.png"
CVAT_COCO = Path("cvat") / "instances_default.json"
LABEL_STUDIO_TASKS = Path("label_studio") / "tasks.json"
LABEL_STUDIO_CONFIG = Path("label_studio") / "label_config.xml"


def write_ranking(ranking: Ranking, out_dir: str | Path) -> list[Path]:
    """Write `ranking.csv` and `ranking.json` into `out_dir`; returns their paths."""
    out_dir = Path(out_dir)
    ensure_writable_folder(out_dir)
    keys = sorted({key for image in ranking.images for key in image.components})
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["rank", "path", "score", "selected", *keys])
    for image in ranking.images:
        values = [_number(image.components[key]) if key in image.components else "" for key in keys]
        writer.writerow([image.rank, str(image.path), _number(image.score), int(image.selected), *values])
    write_bytes(out_dir / RANKING_CSV, buffer.getvalue().encode("utf-8"))
    write_json(
        out_dir / RANKING_JSON,
        {
            "method": ranking.method.value,
            "budget": ranking.budget,
            "pool": len(ranking.images),
            "images": [
                {
                    "rank": image.rank,
                    "path": str(image.path),
                    "score": image.score,
                    "selected": image.selected,
                    "components": image.components,
                }
                for image in ranking.images
            ],
            "failures": [{"file": f.source, "reason": f.reason} for f in ranking.failures],
        },
    )
    return [out_dir / RANKING_CSV, out_dir / RANKING_JSON]


def predictions_dataset(
    paths: Sequence[Path], instances: Sequence[Instances], categories: Sequence[dict], root: Path
) -> Dataset:
    """Predictions (labels = category ids) of the images at `paths` as a `Dataset` rooted at `root`: image ids
    1, 2, ... in the given order, `file_name`s relative to `root`, each annotation's score in its extra."""
    images, next_id = [], 1
    for image_id, (path, found) in enumerate(zip(paths, instances, strict=True), start=1):
        height, width = found.image_size
        file_name = Path(os.path.relpath(Path(path).resolve(), root.resolve())).as_posix()
        record = ImageRecord(image_id, file_name, height, width)
        scores = found.scores.tolist() if found.scores is not None else [None] * len(found)
        for entry, score in zip(found.to_coco_annotations(image_id, next_id), scores, strict=True):
            record.annotations.append(
                AnnotationRecord(
                    entry["id"],
                    entry["category_id"],
                    entry["segmentation"],
                    tuple(entry["bbox"]),
                    entry["area"],
                    entry["iscrowd"],
                    {} if score is None else {"score": float(score)},
                )
            )
        next_id += len(found)
        images.append(record)
    return Dataset(images, [CategoryRecord(c["id"], c["name"]) for c in categories], root)


def export_selection(
    ranking: Ranking,
    predictor: Predictor,
    out_dir: str | Path,
    *,
    image_root: str | Path | None = None,
    form: str = "brush",
    sheet_size: int = 16,
) -> list[Path]:
    """Predict the selected images with `predictor`; write the contact sheet (the first `sheet_size`
    selected) and the CVAT and Label Studio pre-annotations. `image_root` (default: the deepest folder holding
    all selected images) is what `file_name`s and Label Studio paths are relative to. Returns the paths."""
    out_dir = Path(out_dir)
    ensure_writable_folder(out_dir)
    selected = ranking.selected
    paths = [image.path for image in selected]
    root = (
        Path(image_root)
        if image_root is not None
        else Path(os.path.commonpath([p.resolve().parent for p in paths]))
    )
    categories = predictor.categories or [
        {"id": k, "name": f"class {k}"} for k in range(1, predictor.model.num_classes)
    ]
    pixels: list[np.ndarray] = []
    predictions: list[Instances] = []
    for path in paths:
        image = load_image(path)
        predictions.append(predictor.predict(image))
        if len(pixels) < sheet_size:
            pixels.append(image)
    dataset = predictions_dataset(paths, predictions, categories, root)
    written = []
    if sheet_size > 0:
        captions = [f"#{image.rank} {image.score:.3f} {image.path.name}" for image in selected[:sheet_size]]
        names = {c["id"]: c["name"] for c in categories}
        sheet = contact_sheet(pixels, predictions[: len(pixels)], captions, names)
        write_bytes(out_dir / CONTACT_SHEET, encode_png(sheet))
        written.append(out_dir / CONTACT_SHEET)
    write_coco(dataset, out_dir / CVAT_COCO, image_root=root)
    tasks = tasks_from_dataset(dataset, form=form, document_root=root)
    write_label_studio_tasks(tasks, out_dir / LABEL_STUDIO_TASKS)
    write_bytes(out_dir / LABEL_STUDIO_CONFIG, label_config(dataset.categories, form).encode("utf-8"))
    return [*written, out_dir / CVAT_COCO, out_dir / LABEL_STUDIO_TASKS, out_dir / LABEL_STUDIO_CONFIG]


def _number(value: float) -> str:
    return json.dumps(float(value))
