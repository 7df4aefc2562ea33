"""Decoding: captions from any model that follows `captionkit.models.step`'s contract.

- `options`: `DecodingOptions` (validated, the one default: beam 3) and `DecodingResult`;
- `filters`: logit filters (suppressed tokens, no repeated n-grams, no bad endings);
- `strategies`, `beam`: greedy, sampling and (diverse) beam search, per-step updates;
- `search`: the one loop they share, and `decode`.
"""

from captionkit.decoding.beam import BeamSearch
from captionkit.decoding.filters import BAD_ENDINGS
from captionkit.decoding.options import DEFAULT_MAX_LENGTH, DecodingOptions, DecodingResult
from captionkit.decoding.search import decode
from captionkit.decoding.strategies import Greedy, Sampling

__all__ = [
    "BAD_ENDINGS",
    "DEFAULT_MAX_LENGTH",
    "BeamSearch",
    "DecodingOptions",
    "DecodingResult",
    "Greedy",
    "Sampling",
    "decode",
]
