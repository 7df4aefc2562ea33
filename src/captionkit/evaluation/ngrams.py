"""Numbering the 1..n-grams of many captions at once, with numpy instead of Python dicts.

An n-gram of order k is numbered from the number of its first k-1 words and its last word: the
pair is packed into one int64 key, and a sorted array of the keys a corpus holds gives each known
k-gram a column. Captions are then counted by one sparse-matrix build per order, which is what
makes `CiderD` fast: pycocoevalcap builds a Python Counter per caption instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import sparse

_BASE = np.int64(1 << 31)  # word ids < 2^31 and n-gram ids < 2^32 make keys fit in int64


@dataclass
class Encoded:
    """The n-gram counts of a list of captions, one row per caption."""

    counts: sparse.csr_matrix
    """[captions, columns] term frequencies; columns past the index's own are n-grams it lacks
    (numbered for this call only, so that repeats inside a caption still add up)."""
    order: np.ndarray
    """[columns] n-gram order minus one of every column."""
    lengths: np.ndarray
    """[captions] number of words."""

    def head(self, rows: int) -> Encoded:
        """The counts of the first `rows` captions."""
        return Encoded(self.counts[:rows], self.order, self.lengths[:rows])


def split_words(captions: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """All words of space-tokenized captions in one list, and the word count of each caption."""
    # One flat split: a list of lists per caption costs the garbage collector more than a
    # second split for the lengths.
    lengths = np.fromiter(map(len, map(str.split, captions)), dtype=np.int64, count=len(captions))
    return " ".join(captions).split(), lengths


def _word_ids(words: list[str], vocab: dict[str, int], first_new: int) -> np.ndarray:
    """Ids of `words` in `vocab`; words it lacks are numbered from `first_new` (not kept)."""
    new = dict.fromkeys(w for w in dict.fromkeys(words) if w not in vocab)
    if new:
        vocab = {**vocab, **{w: first_new + i for i, w in enumerate(new)}}
    return np.fromiter(map(vocab.__getitem__, words), dtype=np.int64, count=len(words))


def _positions(lengths: np.ndarray, k: int) -> np.ndarray:
    """Flat word positions where a k-gram starts (inside one caption)."""
    per_caption = np.maximum(lengths - k + 1, 0)
    skip = np.repeat(np.cumsum(lengths) - lengths - (np.cumsum(per_caption) - per_caption),
                     per_caption)  # fmt: skip
    return np.arange(per_caption.sum()) + skip


def _encoded(rows: list, cols: list, order: list, lengths: np.ndarray, n_cols: int) -> Encoded:
    """Counts from the (caption, column) of every n-gram occurrence (COO to CSR is a counting
    sort by row, then small sorts within rows: faster than sorting all pairs)."""
    rows, cols = np.concatenate(rows).astype(np.int32), np.concatenate(cols).astype(np.int32)
    counts = sparse.coo_matrix(
        (np.ones(len(rows)), (rows, cols)), shape=(len(lengths), n_cols)
    ).tocsr()
    counts.sum_duplicates()
    return Encoded(counts, np.concatenate(order), lengths)


class NgramIndex:
    """Columns for the 1..n-grams of a corpus of space-tokenized captions."""

    def __init__(self, captions: Sequence[str], n: int = 4):
        self.n = n
        self.corpus = self._build(captions)
        """The n-gram counts of `captions` (the build computes them anyway)."""

    def _build(self, captions: Sequence[str]) -> Encoded:
        words, lengths = split_words(captions)
        self.words = dict.fromkeys(words)
        self.words = {w: i for i, w in enumerate(self.words)}
        word_ids = _word_ids(words, self.words, 0)
        self.keys: list[np.ndarray] = []  # per order >= 2: the sorted pair keys
        self.offsets = [0, len(self.words)]  # first column of each order, then the total
        caption_of = np.repeat(np.arange(len(lengths)), lengths)
        rows, cols, prefix = [caption_of], [word_ids], word_ids
        for k in range(2, self.n + 1):
            pos = _positions(lengths, k)
            keys, inverse = np.unique(prefix[pos] * _BASE + word_ids[pos + k - 1],
                                      return_inverse=True)  # fmt: skip
            self.keys.append(keys)
            prefix = np.full(len(word_ids), -1, dtype=np.int64)
            prefix[pos] = self.offsets[-1] + inverse
            rows.append(caption_of[pos]), cols.append(prefix[pos])
            self.offsets.append(self.offsets[-1] + len(keys))
        return _encoded(rows, cols, [self.column_order()], lengths, self.size)

    @property
    def size(self) -> int:
        return self.offsets[-1]

    def column_order(self) -> np.ndarray:
        """[columns] n-gram order minus one of each of the index's columns."""
        return np.repeat(np.arange(self.n), np.diff(self.offsets))

    def _lookup(self, k: int, keys: np.ndarray) -> np.ndarray:
        """Columns of k-gram keys, -1 for those the index lacks."""
        table = self.keys[k - 2]
        at = np.minimum(np.searchsorted(table, keys), max(len(table) - 1, 0))
        found = (table[at] == keys) if len(table) else np.zeros(len(keys), dtype=bool)
        return np.where(found, self.offsets[k - 1] + at, -1)

    def encode(self, captions: Sequence[str]) -> Encoded:
        """Term frequencies of every 1..n-gram of `captions`, known or not."""
        words, lengths = split_words(captions)
        word_ids = _word_ids(words, self.words, self.size)
        next_col = max(self.size, int(word_ids.max(initial=0)) + 1)
        caption_of = np.repeat(np.arange(len(captions)), lengths)
        rows, cols, prefix = [caption_of], [word_ids], word_ids
        order = [self.column_order(), np.zeros(next_col - self.size, dtype=np.int64)]
        for k in range(2, self.n + 1):
            pos = _positions(lengths, k)
            keys = prefix[pos] * _BASE + word_ids[pos + k - 1]
            col = self._lookup(k, keys)
            new = col < 0  # n-grams the corpus lacks: numbered after every known column
            fresh, inverse = np.unique(keys[new], return_inverse=True)
            col[new] = next_col + inverse
            next_col += len(fresh)
            order.append(np.full(len(fresh), k - 1, dtype=np.int64))
            rows.append(caption_of[pos]), cols.append(col)
            prefix = np.full(len(word_ids), -1, dtype=np.int64)
            prefix[pos] = col
        return _encoded(rows, cols, order, lengths, next_col)

    def gram_strings(self) -> list[str]:
        """The n-gram of every column, words joined by spaces."""
        strings = list(self.words)
        for keys in self.keys:
            prefix, last = keys // _BASE, keys % _BASE
            strings += [
                f"{strings[p]} {strings[w]}" for p, w in zip(prefix.tolist(), last.tolist())
            ]
        return strings

    def columns_of(self, grams: Sequence[str]) -> np.ndarray:
        """The column of each n-gram (words joined by spaces), -1 for those the index lacks."""
        encoded = self.encode(grams)
        counts = encoded.counts.tocoo()
        whole = encoded.order[counts.col] == encoded.lengths[counts.row] - 1  # the gram itself
        columns = np.full(len(grams), -1, dtype=np.int64)
        columns[counts.row[whole]] = counts.col[whole]
        columns[columns >= self.size] = -1
        return columns
