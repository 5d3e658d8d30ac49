"""Evaluation: COCO AP/AR with one consistent detection cap (mask AP from exact pixel overlaps, box AP by
hotcoco), Boundary AP, matched-mask IoU, Dice and boundary IoU, foreground Dice, the Data Science Bowl score
and Panoptic Quality. Definitions: docs/evaluation.md."""

from instaseg.evaluation.coco_eval import STAT_NAMES, CocoMetrics, Match, evaluate_coco, match_detections
from instaseg.evaluation.dsb import DsbScore, dsb_image_score, dsb_score
from instaseg.evaluation.mask_quality import MaskQuality, boundary_iou, foreground_dice, mask_quality
from instaseg.evaluation.panoptic import PanopticQuality, evaluate_panoptic_files
from instaseg.evaluation.report import evaluate, evaluate_files, format_report
from instaseg.evaluation.validation import EvaluationInputError, check_ground_truth, normalize_results

__all__ = [
    "STAT_NAMES",
    "CocoMetrics",
    "DsbScore",
    "EvaluationInputError",
    "MaskQuality",
    "Match",
    "PanopticQuality",
    "boundary_iou",
    "check_ground_truth",
    "dsb_image_score",
    "dsb_score",
    "evaluate",
    "evaluate_coco",
    "evaluate_files",
    "evaluate_panoptic_files",
    "foreground_dice",
    "format_report",
    "mask_quality",
    "match_detections",
    "normalize_results",
]
