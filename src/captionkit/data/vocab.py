"""Word-level vocabulary: lowercase words, punctuation stripped, rare words as `<unk>`."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIALS = (PAD, BOS, EOS, UNK)
_WORD = re.compile(r"[a-z0-9]+")


def tokenize(text: str) -> list[str]:
    """Lowercase words; punctuation and other symbols separate words and are dropped."""
    return _WORD.findall(text.lower())


class Vocabulary:
    """Maps words to ids and back; ids 0-3 are `<pad> <bos> <eos> <unk>`."""

    def __init__(self, words: Iterable[str]):
        self.itos = list(SPECIALS) + [w for w in words if w not in SPECIALS]
        self.stoi = {w: i for i, w in enumerate(self.itos)}

    pad_id, bos_id, eos_id, unk_id = 0, 1, 2, 3

    @classmethod
    def build(cls, captions: Iterable[str], min_count: int = 1) -> Vocabulary:
        """Keep words seen at least `min_count` times, most frequent first (ties alphabetical)."""
        counts = Counter(w for c in captions for w in tokenize(c))
        kept = sorted(
            (w for w, n in counts.items() if n >= min_count), key=lambda w: (-counts[w], w)
        )
        return cls(kept)

    def __len__(self) -> int:
        return len(self.itos)

    def encode(self, caption: str, max_length: int | None = None) -> list[int]:
        """`<bos> w1 ... wn <eos>`, with at most `max_length` words."""
        words = tokenize(caption)[:max_length]
        return [self.bos_id, *(self.stoi.get(w, self.unk_id) for w in words), self.eos_id]

    def decode(self, ids: Iterable[int]) -> str:
        """Words up to the first `<eos>`, specials other than `<unk>` dropped."""
        words = []
        for i in ids:
            if i == self.eos_id:
                break
            if i not in (self.pad_id, self.bos_id):
                words.append(self.itos[i])
        return " ".join(words)

    def to_dict(self) -> dict:
        return {"type": "word", "itos": self.itos}

    @classmethod
    def from_dict(cls, d: dict) -> Vocabulary:
        vocab = cls(d["itos"][len(SPECIALS) :])
        if vocab.itos != d["itos"]:
            raise ValueError("vocabulary does not start with the special tokens")
        return vocab
