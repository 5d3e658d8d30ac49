"""Tracing a model's inference graph to ONNX: what every family's exporter shares."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from instaseg.models.onnx_metadata import INPUT_NAMES, OUTPUT_NAMES, ExportError


def trace_to_onnx(
    graph: nn.Module,
    example_size: tuple[int, int],
    dynamic: bool,
    opset: int,
    translation_table: Mapping[Any, Any],
) -> Any:
    """`graph(image (1, 3, h, w))` traced by `torch.onnx.export(dynamo=True)` -> the `onnx.ModelProto`.

    The example image has unequal sides, not multiples of 32 when `dynamic`, so that the trace specialises on
    neither. Shapes recorded for weights go stale when tools rewrite them (ONNX Runtime's quantizer
    transposes Gemm weights, then fails its own shape check): only computed tensors keep their value_info.
    """
    example = torch.zeros(1, 3, example_size[0], example_size[1] if not dynamic else example_size[1] + 37)
    dynamic_shapes = (
        {"image": {2: torch.export.Dim.DYNAMIC, 3: torch.export.Dim.DYNAMIC}} if dynamic else None
    )
    try:
        with torch.no_grad():
            program = torch.onnx.export(
                graph,
                (example,),
                dynamo=True,
                input_names=list(INPUT_NAMES),
                output_names=list(OUTPUT_NAMES),
                dynamic_shapes=dynamic_shapes,
                opset_version=opset,
                custom_translation_table=dict(translation_table),
                external_data=False,
                verbose=False,
            )
    except Exception as error:  # torch.export and onnxscript raise many types; keep the first line
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise ExportError(f"ONNX export failed: {type(error).__name__}: {first_line}") from error
    model_proto = program.model_proto
    weights = {initializer.name for initializer in model_proto.graph.initializer}
    computed = [info for info in model_proto.graph.value_info if info.name not in weights]
    del model_proto.graph.value_info[:]
    model_proto.graph.value_info.extend(computed)
    return model_proto
