"""Issue 15's speed table: the single-stage CondInst model beside the bundled Mask R-CNN, in one run.

Run (data prepared as in DEVELOPERS.md "Working data"):
`.venv/bin/python benchmarks/bench_realtime.py --condinst runs/nuclei_condinst/best.pt [--maskrcnn CKPT]
    [--runs 7] [--threads 2] [--skip-onnx] [--cpu-time] [--calibration-gt runs/nuclei/train.json]`

On the two validation images of `bench_default_model.py` (256x256 and 696x520): `Predictor.predict` end to
end (decode, model, post-processing at score 0.05) of each model, and with ONNX, each model's export on ONNX
Runtime in float32 and int8 (static, calibrated on 16 training images), all through `Predictor`. The variants
are timed interleaved (one run of each in turn), wall time (or with `--cpu-time` the process's CPU time,
for a machine busy with other jobs), medians over `--runs` after a warm-up, every ONNX Runtime
session with `session.intra_op.allow_spinning = 0` (idle spinning threads would slow the other variants).
Then, for each model file, the peak resident memory of a fresh process that loads it and predicts both
images, and the file sizes.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime
import torch
from bench_default_model import IMAGES, image_path

from instaseg.export.onnx_export import export_model
from instaseg.export.quantize import quantize_onnx
from instaseg.inference.postprocess import PostprocessOptions
from instaseg.inference.predictor import Predictor
from instaseg.models import load_model
from instaseg.models.default_model import default_model_path
from instaseg.models.onnx_runtime import OnnxMaskRCNN

CALIBRATION_IMAGES = 16
# VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the forking parent (this large process) into the
# child, so every probe would report at least the parent's size.
MEMORY_PROBE = """
import re, sys, torch
torch.set_num_threads(int(sys.argv[2]))
from instaseg.inference.postprocess import PostprocessOptions
from instaseg.inference.predictor import Predictor
predictor = Predictor(sys.argv[1], postprocess=PostprocessOptions(score_threshold=0.05))
for path in sys.argv[3:]:
    predictor.predict(path)
status = open("/proc/self/status").read()
print(int(re.search(r"VmHWM:\\s+(\\d+) kB", status).group(1)) / 1024)
"""


def without_spinning(model: OnnxMaskRCNN, threads: int) -> OnnxMaskRCNN:
    """The same runtime with a session whose idle threads sleep instead of spinning."""
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    model.session = onnxruntime.InferenceSession(str(model.path), options, providers=["CPUExecutionProvider"])
    return model


def calibration_files(train_json: Path) -> list[Path]:
    records = json.loads(train_json.read_text())["images"]
    chosen = np.linspace(0, len(records) - 1, CALIBRATION_IMAGES).round().astype(int)
    return [train_json.parent / records[i]["file_name"] for i in chosen]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--condinst", required=True, help="CondInst model file")
    parser.add_argument("--maskrcnn", default=str(default_model_path()), help="Mask R-CNN model file")
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-onnx", action="store_true")
    parser.add_argument(
        "--cpu-time",
        action="store_true",
        help="time with the process's CPU time (all threads) instead of wall time: on a machine shared with "
        "other jobs, CPU time measures the work done, wall time mostly the wait for a core",
    )
    parser.add_argument("--calibration-gt", type=Path, default=Path("runs/nuclei/train.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    clock = time.process_time if args.cpu_time else time.perf_counter
    every = PostprocessOptions(score_threshold=0.05)
    files = {"Mask R-CNN": Path(args.maskrcnn), "CondInst": Path(args.condinst)}
    variants = {
        f"{name} PyTorch": Predictor(load_model(path), postprocess=every) for name, path in files.items()
    }
    sizes = {name: path.stat().st_size / 2**20 for name, path in files.items()}
    with tempfile.TemporaryDirectory(prefix="bench-realtime-") as folder:
        if not args.skip_onnx:
            calibration = calibration_files(args.calibration_gt)
            for name, path in files.items():
                fp32 = Path(folder) / f"{name.replace(' ', '_')}.onnx"
                export_model(path, fp32)
                int8 = fp32.with_suffix(".int8.onnx")
                quantize_onnx(fp32, int8, "static", calibration)
                for kind, onnx_path in (("ONNX fp32", fp32), ("ONNX int8", int8)):
                    runtime = without_spinning(load_model(onnx_path), args.threads)
                    variants[f"{name} {kind}"] = Predictor(runtime, postprocess=every)
                    sizes[f"{name} {kind}"] = onnx_path.stat().st_size / 2**20
        print(f"{args.threads} threads, torch {torch.__version__}, onnxruntime {onnxruntime.__version__}")
        unit = "CPU ms" if args.cpu_time else "ms"
        print(f"| variant | image | detections | predict {unit} (median) | min | x vs Mask R-CNN PyTorch |")
        print("|---|---|---|---|---|---|")
        for label, image_id in IMAGES.items():
            path = image_path(image_id)
            counts = {name: len(predictor.predict(path)) for name, predictor in variants.items()}  # warm-up
            times: dict[str, list[float]] = {name: [] for name in variants}
            for _ in range(args.runs):
                for name, predictor in variants.items():
                    start = clock()
                    predictor.predict(path)
                    times[name].append((clock() - start) * 1000)
            reference = statistics.median(times["Mask R-CNN PyTorch"])
            for name, values in times.items():
                median = statistics.median(values)
                print(
                    f"| {name} | {label} | {counts[name]} | {median:.0f} | {min(values):.0f} | "
                    f"{reference / median:.1f} |"
                )
        paths = [str(image_path(image_id)) for image_id in IMAGES.values()]
        print("| model | file MB | peak resident MB (fresh process, both images) |")
        print("|---|---|---|")
        for name, path in files.items():
            probe = [sys.executable, "-c", MEMORY_PROBE, str(path), str(args.threads), *paths]
            peak = float(subprocess.run(probe, check=True, capture_output=True, text=True).stdout.split()[-1])
            print(f"| {name} | {sizes[name]:.1f} | {peak:.0f} |")
        for name, size in sizes.items():
            if "ONNX" in name:
                print(f"| {name} | {size:.1f} | |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
