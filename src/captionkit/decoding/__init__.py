"""Decoding strategies: batched greedy and beam search over any registered model."""

from captionkit.decoding.decoding import (
    BeamSearchDecoder,
    DecodingOptions,
    DecodingResult,
    GreedyDecoder,
    decode,
)

__all__ = ["BeamSearchDecoder", "DecodingOptions", "DecodingResult", "GreedyDecoder", "decode"]
