"""CondInst-style single-stage instance segmentation, CPU-first. In data-path order: `transform.py` (scale
down only, pad) -> EfficientNet-Lite0 body (`instaseg.models.efficientnet_lite`) -> `neck.py` (PAFPN P2..P4)
-> `head.py` (per-point classes, boxes, dynamic mask kernels; stride-4 mask branch) -> `assigner.py` and
`losses.py` (training) -> `dynamic_mask.py` (per-instance mask heads) -> `model.py` (the composition);
`config.py` and `build.py` describe and construct it."""

from instaseg.models.condinst.build import CONDINST_CONFIGS, build_condinst
from instaseg.models.condinst.config import CondInstConfig
from instaseg.models.condinst.model import CondInst

__all__ = ["CONDINST_CONFIGS", "CondInst", "CondInstConfig", "build_condinst"]
