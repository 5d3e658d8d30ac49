"""Active learning: rank unlabelled images for annotation and export the chosen ones to labelling tools.

`ranking.rank_images` scores a pool with one of `ranking.Method` (uncertainty, TTA disagreement, core-set,
hybrid, random); `export` writes the ranking, a contact sheet and CVAT / Label Studio pre-annotations. How the
methods compare, measured by simulated annotation rounds: `benchmarks/bench_active_learning.py` and
docs/models.md; the workflow: docs/annotation.md.
"""

from instaseg.active.coreset import FeatureModel, k_center_greedy
from instaseg.active.ranking import Method, RankedImage, Ranking, RankOptions, rank_images
from instaseg.active.uncertainty import MissingCapabilityError

__all__ = [
    "FeatureModel",
    "Method",
    "MissingCapabilityError",
    "RankOptions",
    "RankedImage",
    "Ranking",
    "k_center_greedy",
    "rank_images",
]
