"""The classical baseline on a real validation split: Otsu + distance-transform watershed, COCO-evaluated.

The reference row for the learned nuclei model (issue 4): the same split, the same max-dets, the same metrics.

    .venv/bin/instaseg convert --from mask-folders ../shared/data/dsb2018/stage1_train \
        --to coco runs/nuclei/all.json --category-name nucleus
    .venv/bin/instaseg split runs/nuclei/all.json --val-fraction 0.15 --seed 0 \
        --out-train runs/nuclei/train.json --out-val runs/nuclei/val.json
    .venv/bin/python benchmarks/bench_baseline_watershed.py --gt runs/nuclei/val.json \
        --out runs/nuclei/watershed
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from instaseg.baselines.watershed import segment_nuclei
from instaseg.data.coco import read_coco
from instaseg.evaluation.report import evaluate_files
from instaseg.io.atomic import atomic_write


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--gt", required=True, help="COCO ground truth of the validation split")
    parser.add_argument("--out", required=True, help="folder for results.json and report.json")
    parser.add_argument("--max-dets", type=int, default=500)
    args = parser.parse_args()

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    dataset = read_coco(args.gt, decode_images=False)
    results, start = [], time.perf_counter()
    for image in dataset.images:
        results.extend(segment_nuclei(dataset.image_path(image)).to_coco_results(image.id))
    seconds_per_image = (time.perf_counter() - start) / len(dataset.images)
    with atomic_write(out / "results.json", "w") as stream:
        json.dump(results, stream)
    report = evaluate_files(args.gt, out / "results.json", max_dets=args.max_dets, out=out / "report.json")
    box_report = evaluate_files(args.gt, out / "results.json", iou_type="bbox", max_dets=args.max_dets)
    segm, bbox = report["coco"]["segm"]["stats"], box_report["coco"]["bbox"]["stats"]
    print(f"{len(dataset.images)} images, max dets {args.max_dets}, {seconds_per_image:.2f} s/image\n")
    print("| method | mask AP | AP50 | AP75 | box AP | DSB score |")
    print("|---|---|---|---|---|---|")
    print(
        f"| Otsu + watershed (scikit-image) | {segm['AP']:.3f} | {segm['AP50']:.3f} | {segm['AP75']:.3f} "
        f"| {bbox['AP']:.3f} | {report['pixel_metrics']['dsb_score']:.3f} |"
    )


if __name__ == "__main__":
    main()
