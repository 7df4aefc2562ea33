"""Caption tokenizers: word level (`WordTokenizer`) and subword BPE (`BpeTokenizer`).

Both turn a caption into `<bos> ... <eos>` ids and back, with the same special ids (`<pad>`=0,
`<bos>`=1, `<eos>`=2, `<unk>`=3), so models and decoders work with either. Both start from the
same PTB-style words (`ptb_tokenizer.tokenize`): BPE then splits rare words into pieces instead of
mapping them to `<unk>`. Decoding gives those words joined by spaces ("a dog 's ball"), which is
also what the evaluation tokenizer makes of the caption.

A tokenizer is saved in a run's `config.json` as `to_dict()` and restored by `tokenizer_from_dict`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol, runtime_checkable

from captionkit.data.ptb_tokenizer import tokenize
from captionkit.data.vocab import (
    BOS_ID,
    EOS_ID,
    PAD_ID,
    SPECIALS,
    UNK,
    UNK_ID,
    Vocabulary,
    content_ids,
)
from captionkit.errors import CaptionkitError

TOKENIZER_KINDS = ("word", "bpe")

WordTokenizer = Vocabulary
"""Word-level tokenizer: the `Vocabulary` under the name that matches `BpeTokenizer`."""

_METASPACE = "\u2581"  # "▁" marks the start of a word in BPE pieces, as in SentencePiece


@runtime_checkable
class Tokenizer(Protocol):
    """What training, decoding and checkpoints need from a tokenizer."""

    pad_id: int
    bos_id: int
    eos_id: int
    unk_id: int

    def encode(self, caption: str, max_length: int | None = None) -> list[int]:
        """`<bos> t1 ... tn <eos>`, with at most `max_length` tokens between the specials."""
        ...

    def encode_with_info(
        self, caption: str, max_length: int | None = None
    ) -> tuple[list[int], bool]:
        """`encode()`, and whether tokens were cut off by `max_length`."""
        ...

    def decode(self, ids: Iterable[int]) -> str:
        """Text of the tokens up to the first `<eos>`; `<pad>` and `<bos>` are dropped."""
        ...

    def __len__(self) -> int: ...

    def to_dict(self) -> dict:
        """JSON-serializable form with a `"type"` key, read back by `tokenizer_from_dict`."""
        ...


class BpeTokenizer:
    """Byte-pair encoding (Hugging Face `tokenizers`) over the PTB words of the captions.

    Each word becomes one or more pieces; a piece starting a word carries "▁". Characters never
    seen in training become `<unk>`.
    """

    pad_id, bos_id, eos_id, unk_id = PAD_ID, BOS_ID, EOS_ID, UNK_ID

    def __init__(self, hf_tokenizer):
        ids = [hf_tokenizer.token_to_id(s) for s in SPECIALS]
        if ids != [PAD_ID, BOS_ID, EOS_ID, UNK_ID]:
            raise ValueError(f"BPE special tokens {list(SPECIALS)} must have ids 0-3, not {ids}")
        self.hf = hf_tokenizer

    @classmethod
    def train(cls, captions: Iterable[str], vocab_size: int = 2000) -> BpeTokenizer:
        """Learn merges on `captions` until there are `vocab_size` tokens (specials included;
        fewer if the captions run out of pairs, more only if they have more distinct characters)."""
        from tokenizers import Tokenizer as HfTokenizer
        from tokenizers import decoders, models, normalizers, pre_tokenizers, trainers

        hf = HfTokenizer(models.BPE(unk_token=UNK, fuse_unk=True))
        hf.normalizer = normalizers.Lowercase()
        # Words are split on spaces and marked with "▁"; the decoder turns "▁" back into spaces,
        # so decoding gives exactly the words joined by single spaces.
        hf.pre_tokenizer = pre_tokenizers.Metaspace(_METASPACE, prepend_scheme="always")
        hf.decoder = decoders.Metaspace(_METASPACE, prepend_scheme="always")
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size, min_frequency=2, special_tokens=list(SPECIALS),
            show_progress=False,
        )  # fmt: skip
        hf.train_from_iterator((" ".join(tokenize(c)) for c in captions), trainer)
        return cls(hf)

    def __len__(self) -> int:
        return self.hf.get_vocab_size(with_added_tokens=True)

    def encode_with_info(
        self, caption: str, max_length: int | None = None
    ) -> tuple[list[int], bool]:
        """`<bos> p1 ... pn <eos>` with at most `max_length` pieces, and whether pieces were cut."""
        ids = self.hf.encode(" ".join(tokenize(caption)), add_special_tokens=False).ids
        truncated = max_length is not None and len(ids) > max_length
        return [self.bos_id, *ids[:max_length], self.eos_id], truncated

    def encode(self, caption: str, max_length: int | None = None) -> list[int]:
        """`<bos> p1 ... pn <eos>`, with at most `max_length` pieces."""
        return self.encode_with_info(caption, max_length)[0]

    def decode(self, ids: Iterable[int]) -> str:
        """The words of the pieces up to the first `<eos>`, joined by spaces; `<unk>` is kept."""
        return self.hf.decode(content_ids(ids), skip_special_tokens=False).strip()

    def to_dict(self) -> dict:
        return {"type": "bpe", "tokenizer": self.hf.to_str()}

    @classmethod
    def from_dict(cls, d: dict) -> BpeTokenizer:
        from tokenizers import Tokenizer as HfTokenizer

        try:
            hf = HfTokenizer.from_str(d["tokenizer"])
        except Exception as e:  # tokenizers raises a bare Exception for malformed JSON
            raise ValueError(f"unreadable BPE tokenizer ({e})") from None
        return cls(hf)


def build_tokenizer(
    kind: str, captions: Iterable[str], min_count: int = 5, vocab_size: int = 2000
) -> Tokenizer:
    """A tokenizer of `kind` ("word" or "bpe") fitted to the training `captions`.

    `min_count` is for words (rarer ones become `<unk>`), `vocab_size` for BPE."""
    if kind == "word":
        return WordTokenizer.build(captions, min_count)
    if kind == "bpe":
        return BpeTokenizer.train(captions, vocab_size)
    raise CaptionkitError(f"unknown tokenizer '{kind}' (choose from {', '.join(TOKENIZER_KINDS)})")


MAX_VOCABULARY = 1 << 20
"""The most tokens a saved tokenizer may have: a bound on what a hostile file can allocate."""
MAX_TOKEN_CHARS = 1000
MAX_BPE_JSON_CHARS = 64 << 20


def tokenizer_from_dict(d: dict) -> Tokenizer:
    """Rebuild a tokenizer saved with `to_dict()`; anything but such a dict, within the size
    bounds above, is a `CaptionkitError` (run folders may come from anywhere)."""
    if not isinstance(d, dict):
        raise CaptionkitError(f"a tokenizer is saved as a mapping, not {type(d).__name__}")
    kind = d.get("type", "word")
    if kind == "word":
        itos = d.get("itos")
        words_ok = isinstance(itos, list) and len(itos) <= MAX_VOCABULARY
        if not (words_ok and all(isinstance(t, str) and len(t) <= MAX_TOKEN_CHARS for t in itos)):
            raise CaptionkitError(
                f"a word tokenizer needs 'itos': a list of at most {MAX_VOCABULARY} words"
            )
        try:
            return WordTokenizer.from_dict(d)
        except ValueError as e:
            raise CaptionkitError(f"unusable word tokenizer ({e})") from None
    if kind == "bpe":
        text = d.get("tokenizer")
        if not isinstance(text, str) or len(text) > MAX_BPE_JSON_CHARS:
            raise CaptionkitError("a BPE tokenizer needs 'tokenizer': its JSON text")
        try:
            tokenizer = BpeTokenizer.from_dict(d)
        except ValueError as e:
            raise CaptionkitError(str(e)) from None
        if len(tokenizer) > MAX_VOCABULARY:
            raise CaptionkitError(
                f"a BPE tokenizer of {len(tokenizer)} tokens (most: {MAX_VOCABULARY})"
            )
        return tokenizer
    raise CaptionkitError(f"unknown tokenizer type {kind!r} (word or bpe)")
