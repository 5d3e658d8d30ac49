"""The C++ extension instaseg._C: built when CI requires it, every kernel source in it, dispatch falls back.

CI sets INSTASEG_REQUIRE_EXTENSION=1 so that a failed or skipped build fails here instead of silently testing
only the pure-PyTorch paths.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
from importlib.machinery import ModuleSpec
from pathlib import Path

import pytest
import torch

from instaseg.ops import _extension, roi_align, roi_align_torch

NO_EXTENSION = f"instaseg._C not available: {_extension.EXTENSION_ERROR or 'not built'}"

CSRC = Path(__file__).resolve().parents[2] / "instaseg" / "ops" / "csrc"
REQUIRED = os.environ.get("INSTASEG_REQUIRE_EXTENSION") == "1"
roi_align_module = importlib.import_module("instaseg.ops.roi_align")

needs_extension = pytest.mark.skipif(not _extension.HAS_EXTENSION, reason=NO_EXTENSION)


def declared_operators() -> dict[str, str]:
    """Operator name -> source file, from the m.def("name(...") schemas in instaseg/ops/csrc/*.cpp."""
    operators = {}
    for source in sorted(CSRC.glob("*.cpp")):
        for name in re.findall(r'm\.def\(\s*"(\w+)\(', source.read_text()):
            operators[name] = source.name
    return operators


@pytest.mark.skipif(not REQUIRED, reason="INSTASEG_REQUIRE_EXTENSION=1 not set")
def test_extension_is_built_when_required():
    assert _extension.HAS_EXTENSION, f"instaseg._C did not load: {_extension.EXTENSION_ERROR or 'not built'}"
    library = Path(importlib.util.find_spec("instaseg._C").origin)
    stale = [source.name for source in CSRC.glob("*.cpp") if source.stat().st_mtime > library.stat().st_mtime]
    assert not stale, (
        f"{library.name} is older than {stale}: rebuild with `python setup.py build_ext --inplace`"
    )


def test_every_kernel_source_declares_operators():
    operators = declared_operators()
    assert {"roi_align_forward", "roi_align_backward"} <= set(operators)
    assert {source.name for source in CSRC.glob("*.cpp")} == set(operators.values())


@needs_extension
def test_every_declared_operator_is_registered():
    # setup.py compiles every csrc/*.cpp into instaseg._C; a source left out of the build is missing here.
    missing = [
        f"{name} ({source})"
        for name, source in declared_operators().items()
        if not hasattr(torch.ops.instaseg, name)
    ]
    assert not missing, f"operators declared in csrc but not in instaseg._C: {missing}"


def test_unloadable_library_is_reported_not_raised(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    broken = tmp_path / "_C.so"
    broken.write_bytes(b"not a shared library")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: ModuleSpec(name, None, origin=str(broken)))
    loaded, error = _extension._load()
    assert not loaded
    assert str(broken) in error


def test_missing_library_means_no_extension_and_no_error(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    assert _extension._load() == (False, None)


# --- dispatch -----------------------------------------------------------------------------------------------


@pytest.fixture
def kernel_calls(monkeypatch: pytest.MonkeyPatch) -> list[torch.dtype]:
    """Records the input dtype of every call that roi_align routes to the C++ kernel."""
    calls: list[torch.dtype] = []
    kernel = roi_align_module._RoIAlignKernel.apply

    def spy(input, *args):
        calls.append(input.dtype)
        return kernel(input, *args)

    monkeypatch.setattr(roi_align_module._RoIAlignKernel, "apply", spy)
    return calls


def _inputs(dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(2, 3, 12, 14, generator=generator).to(dtype)
    boxes = torch.tensor([[0, 1.5, 2.0, 9.0, 8.5], [1, -2.0, 3.0, 6.0, 13.0], [1, 4.0, 4.0, 4.5, 4.2]])
    return features, boxes


@needs_extension
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cpu_float_inputs_go_to_the_kernel(kernel_calls: list[torch.dtype], dtype: torch.dtype):
    features, boxes = _inputs(dtype)
    roi_align(features, boxes, 3)
    assert kernel_calls == [dtype]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_pools_in_float32_with_the_kernel(kernel_calls: list[torch.dtype], dtype: torch.dtype):
    """bf16/fp16 features (autocast) are pooled by the kernel in float32 and returned in their own dtype."""
    features, boxes = _inputs(dtype)
    output = roi_align(features, boxes, 3, sampling_ratio=2)
    assert kernel_calls == [torch.float32]
    assert output.dtype == dtype
    torch.testing.assert_close(output, roi_align_torch(features, boxes, 3, sampling_ratio=2))
    # Computed in float32 from the rounded inputs, so only the final rounding differs from a float32 run.
    exact = roi_align(features.float(), boxes, 3, sampling_ratio=2)
    torch.testing.assert_close(output.float(), exact, atol=2e-2, rtol=2e-2)


def test_half_precision_backward_through_the_float32_kernel():
    features, boxes = _inputs(torch.bfloat16)
    features.requires_grad_(True)
    roi_align(features, boxes, 2).float().sum().backward()
    assert features.grad.dtype == torch.bfloat16
    assert features.grad.abs().sum() > 0


def test_without_the_extension_everything_uses_the_pure_path(
    kernel_calls: list[torch.dtype], monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(_extension, "HAS_EXTENSION", False)
    features, boxes = _inputs(torch.float32)
    torch.testing.assert_close(roi_align(features, boxes, 3), roi_align_torch(features, boxes, 3))
    assert kernel_calls == []


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_inputs_use_the_pure_path(kernel_calls: list[torch.dtype]):
    features, boxes = _inputs(torch.float32)
    output = roi_align(features.cuda(), boxes.cuda(), 3)
    assert kernel_calls == []
    torch.testing.assert_close(output.cpu(), roi_align_torch(features, boxes, 3))
