"""Loads the optional C++ kernels of ``instaseg._C`` (built by setup.py) into ``torch.ops.instaseg``.

``HAS_EXTENSION`` tells each op whether it can dispatch to its kernel; without it every op uses its
pure-PyTorch path. ``EXTENSION_ERROR`` says why loading failed (``None`` when it loaded, or was never built).
The module registers its operators through the dispatcher and has no Python module init, so it is loaded with
``torch.ops.load_library`` from the path the import system finds for ``instaseg._C``.
"""

from __future__ import annotations

import importlib.util

import torch


def _load() -> tuple[bool, str | None]:
    spec = importlib.util.find_spec("instaseg._C")
    if spec is None or spec.origin is None:
        return False, None
    try:
        torch.ops.load_library(spec.origin)
    except OSError as error:  # built against another torch, or a broken build: fall back, but keep the reason
        return False, f"{spec.origin}: {error}"
    return True, None


HAS_EXTENSION, EXTENSION_ERROR = _load()
