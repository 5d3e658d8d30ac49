"""Does the order of the boxes change RoiAlign's speed? ONNX Runtime's and instaseg's kernels, real proposals.

`MultiScaleRoIAlign` pools its boxes in `pooling_order` (level, image, centre row band, centre x) rather than
in the order given (the RPN's, by objectness). The result is the same; this measures the speed. For the first
`--images` validation images it runs the model, keeps what its box pooler receives (the finest FPN map and the
RPN's proposals, all on that level for small objects like nuclei), then times, interleaved, `--runs` times:
ONNX Runtime's `RoiAlign` (a one-operator graph with the exported model's attributes) and instaseg's
`roi_align`, each on the proposals in the RPN's order and in `pooling_order`. Prints medians per image.

    .venv/bin/python benchmarks/bench_pooling_order.py --model runs/nuclei_lite0/best.pt \
        --gt runs/nuclei/val.json [--images 5] [--runs 11] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from instaseg.io.images import load_image, to_tensor
from instaseg.models.loading import load_model
from instaseg.ops import roi_align
from instaseg.ops.poolers import assign_boxes_to_levels, pooling_order


def capture_box_pooler_inputs(
    model: torch.nn.Module, images: list[torch.Tensor]
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(finest FPN map (1, C, H, W), proposals (K, 4)) that `model`'s box pooler receives for each image."""
    model.eval()
    pooler = model.roi_heads.box_roi_pool
    captured = []

    def keep_inputs(module, args) -> None:
        features, boxes, _ = args
        captured.append((features[pooler.featmap_names[0]].clone(), boxes[0].clone()))

    hook = pooler.register_forward_pre_hook(keep_inputs)
    with torch.inference_mode():
        for image in images:
            model([image])
    hook.remove()
    return captured


def onnx_roi_align(threads: int, output_size: int, sampling_ratio: int, scale: float):
    """A one-operator ONNX Runtime session: RoiAlign as `instaseg export` writes it (aligned=False)."""
    import onnxruntime
    from onnx import TensorProto, helper

    node = helper.make_node(
        "RoiAlign",
        ["x", "rois", "batch"],
        ["y"],
        coordinate_transformation_mode="output_half_pixel",
        output_height=output_size,
        output_width=output_size,
        sampling_ratio=sampling_ratio,
        spatial_scale=scale,
    )
    graph = helper.make_graph(
        [node],
        "roi_align",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, None, None, None]),
            helper.make_tensor_value_info("rois", TensorProto.FLOAT, [None, 4]),
            helper.make_tensor_value_info("batch", TensorProto.INT64, [None]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9  # what onnxruntime reads
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    session = onnxruntime.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )

    def run(feature: torch.Tensor, boxes: torch.Tensor) -> None:
        inputs = {"x": feature.numpy(), "rois": boxes.numpy(), "batch": np.zeros(len(boxes), dtype=np.int64)}
        session.run(None, inputs)

    return run


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", required=True, help="instaseg checkpoint")
    parser.add_argument("--gt", required=True, type=Path, help="COCO file whose first images are used")
    parser.add_argument("--images", type=int, default=5)
    parser.add_argument("--runs", type=int, default=11)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    entries = json.loads(args.gt.read_text())["images"][: args.images]
    images = [to_tensor(load_image(args.gt.parent / entry["file_name"])) for entry in entries]
    model = load_model(args.model)
    cases = capture_box_pooler_inputs(model, images)
    pooler = model.roi_heads.box_roi_pool
    size, ratio, scale = pooler.output_size[0], pooler.sampling_ratio, 0.25
    ort_run = onnx_roi_align(args.threads, size, ratio, scale)

    def torch_run(feature: torch.Tensor, boxes: torch.Tensor) -> None:
        roi_align(feature, [boxes], size, scale, ratio)

    orders = []
    for feature, boxes in cases:
        rois = torch.cat([boxes.new_zeros(len(boxes), 1), boxes], dim=1)
        levels = assign_boxes_to_levels(boxes, 2, 5)
        orders.append((feature, boxes, boxes[pooling_order(rois, levels, 1)]))
    times = {
        (kernel, order): [] for kernel in ("onnxruntime", "instaseg") for order in ("rpn", "pooling_order")
    }
    for run_index in range(args.runs + 1):
        for (kernel, order), values in times.items():
            run = ort_run if kernel == "onnxruntime" else torch_run
            started = time.perf_counter()
            for feature, given, sorted_boxes in orders:
                run(feature, given if order == "rpn" else sorted_boxes)
            if run_index > 0:
                values.append(1000 * (time.perf_counter() - started) / len(orders))
    sizes = ", ".join(f"{len(boxes)} boxes on {tuple(feature.shape[-2:])}" for feature, boxes, _ in orders)
    print(f"{len(orders)} images ({sizes}); {args.threads} threads; median of {args.runs} runs, ms per image")
    print("| kernel | RPN order | pooling_order | speed-up |\n|---|---|---|---|")
    for kernel in ("onnxruntime", "instaseg"):
        given = statistics.median(times[(kernel, "rpn")])
        ordered = statistics.median(times[(kernel, "pooling_order")])
        print(f"| {kernel} | {given:.1f} | {ordered:.1f} | {given / ordered:.2f}x |")


if __name__ == "__main__":
    main()
