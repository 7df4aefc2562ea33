"""Metrics: pure scoring of captions against references, with no model in sight.

The COCO caption metrics through pycocoevalcap (`coco_metrics`: BLEU, METEOR, ROUGE-L, CIDEr(-D),
SPICE), the Java tools they run (`java`, `java_ptb_tokenizer`, `meteor`, `spice`), a vectorised
CIDEr-D over n-gram count matrices (`cider_d`, `ngrams`) and descriptive caption statistics
(`caption_stats`). Training uses `quick_metrics` and `CiderD`; `captionkit.evaluation` scores a
trained run with `score_captions`.
"""

from captionkit.metrics.coco_metrics import (
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
