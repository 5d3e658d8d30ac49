"""Inference: `Predictor` (images in, post-processed `Instances` out), tiling, test-time augmentation,
tracking across video frames, and the files `instaseg predict` writes."""

from instaseg.inference.postprocess import PostprocessOptions, postprocess
from instaseg.inference.predictor import Predictor
from instaseg.inference.tiling import TilingOptions
from instaseg.inference.tracking import Tracker, TrackerOptions
from instaseg.inference.tta import TTAOptions

__all__ = [
    "PostprocessOptions",
    "Predictor",
    "TTAOptions",
    "TilingOptions",
    "Tracker",
    "TrackerOptions",
    "postprocess",
]
