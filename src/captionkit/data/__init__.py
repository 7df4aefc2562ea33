"""Data: reading caption datasets, the built-in `shapes` generator, and the tokenizers."""

from captionkit.data.formats import load_dataset
from captionkit.data.ptb_tokenizer import tokenize
from captionkit.data.records import CaptionDataset, ImageRecord
from captionkit.data.vocab import Vocabulary

__all__ = ["CaptionDataset", "ImageRecord", "Vocabulary", "load_dataset", "tokenize"]
