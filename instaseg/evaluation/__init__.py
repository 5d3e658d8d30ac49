"""Evaluation: COCO AP/AR (faster-coco-eval) with one consistent detection cap, Boundary AP, matched-mask IoU,
Dice and boundary IoU, foreground Dice, and the Data Science Bowl score. Definitions: docs/evaluation.md."""

from instaseg.evaluation.coco_eval import STAT_NAMES, CocoMetrics, Match, evaluate_coco, match_detections
from instaseg.evaluation.dsb import DsbScore, dsb_image_score, dsb_score
from instaseg.evaluation.mask_quality import MaskQuality, boundary_iou, foreground_dice, mask_quality
from instaseg.evaluation.report import evaluate, evaluate_files, format_report
from instaseg.evaluation.validation import EvaluationInputError, check_ground_truth, normalize_results

__all__ = [
    "STAT_NAMES",
    "CocoMetrics",
    "DsbScore",
    "EvaluationInputError",
    "MaskQuality",
    "Match",
    "boundary_iou",
    "check_ground_truth",
    "dsb_image_score",
    "dsb_score",
    "evaluate",
    "evaluate_coco",
    "evaluate_files",
    "foreground_dice",
    "format_report",
    "mask_quality",
    "match_detections",
    "normalize_results",
]
