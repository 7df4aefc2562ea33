"""Descriptive statistics of generated captions: length, vocabulary, novelty."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from captionkit.data.ptb_tokenizer import tokenize


def caption_stats(
    predictions: Mapping[str, str], training_captions: Iterable[str] | None = None
) -> dict[str, float]:
    """`length_mean`: words per generated caption; `vocabulary`: distinct words they use;
    `novel_percent` (when training captions are given): % of generated captions that are none
    of the training captions. Captions are compared as PTB tokens, so "A dog." and "a dog" are
    the same caption."""
    words = [tokenize(c) for c in predictions.values()]
    stats = {
        "length_mean": sum(map(len, words)) / max(len(words), 1),
        "vocabulary": float(len({w for ws in words for w in ws})),
    }
    if training_captions is not None:
        seen = {" ".join(tokenize(c)) for c in training_captions}
        if seen:
            novel = sum(" ".join(ws) not in seen for ws in words)
            stats["novel_percent"] = 100.0 * novel / max(len(words), 1)
    return stats
