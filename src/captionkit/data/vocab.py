"""The word vocabulary (`Vocabulary`, also known as `tokenizers.WordTokenizer`) and the special
tokens every tokenizer shares. Words are the PTB tokens of `ptb_tokenizer.tokenize`."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from captionkit.data.ptb_tokenizer import tokenize

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIALS = (PAD, BOS, EOS, UNK)
PAD_ID, BOS_ID, EOS_ID, UNK_ID = 0, 1, 2, 3


def content_ids(ids: Iterable[int]) -> list[int]:
    """The ids up to the first `<eos>`, without `<pad>` and `<bos>` (`<unk>` is kept)."""
    kept = []
    for i in ids:
        if i == EOS_ID:
            break
        if i not in (PAD_ID, BOS_ID):
            kept.append(int(i))
    return kept


class Vocabulary:
    """Word-level tokenizer: maps words to ids and back; ids 0-3 are `<pad> <bos> <eos> <unk>`."""

    pad_id, bos_id, eos_id, unk_id = PAD_ID, BOS_ID, EOS_ID, UNK_ID

    def __init__(self, words: Iterable[str]):
        self.itos = list(SPECIALS) + [w for w in words if w not in SPECIALS]
        self.stoi = {w: i for i, w in enumerate(self.itos)}

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

    def encode_with_info(
        self, caption: str, max_length: int | None = None
    ) -> tuple[list[int], bool]:
        """`<bos> w1 ... wn <eos>` with at most `max_length` words, and whether words were cut."""
        words = tokenize(caption)
        truncated = max_length is not None and len(words) > max_length
        ids = [self.stoi.get(w, self.unk_id) for w in words[:max_length]]
        return [self.bos_id, *ids, self.eos_id], truncated

    def encode(self, caption: str, max_length: int | None = None) -> list[int]:
        """`<bos> w1 ... wn <eos>`, with at most `max_length` words."""
        return self.encode_with_info(caption, max_length)[0]

    def decode(self, ids: Iterable[int]) -> str:
        """Words up to the first `<eos>`, specials other than `<unk>` dropped."""
        return " ".join(self.itos[i] for i in content_ids(ids))

    def to_dict(self) -> dict:
        return {"type": "word", "itos": self.itos}

    @classmethod
    def from_dict(cls, d: dict) -> Vocabulary:
        vocab = cls(d["itos"][len(SPECIALS) :])
        if vocab.itos != d["itos"]:
            raise ValueError("vocabulary does not start with the special tokens")
        return vocab
