"""Evaluation: the COCO caption metrics (pycocoevalcap) and evaluating a trained run."""

from captionkit.evaluation.metrics import (
    METRIC_KEYS,
    MetricReport,
    coco_metrics,
    quick_cider,
    quick_metrics,
    score_captions,
)

__all__ = [
    "METRIC_KEYS",
    "MetricReport",
    "coco_metrics",
    "quick_cider",
    "quick_metrics",
    "score_captions",
]
