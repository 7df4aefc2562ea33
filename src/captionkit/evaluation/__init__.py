"""Evaluation: the COCO caption metrics (pycocoevalcap) and evaluating a trained run."""

from captionkit.evaluation.metrics import METRIC_KEYS, coco_metrics, quick_cider, quick_metrics

__all__ = ["METRIC_KEYS", "coco_metrics", "quick_cider", "quick_metrics"]
