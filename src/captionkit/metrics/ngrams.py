"""Numbering the 1..n-grams of many captions at once, with numpy instead of Python dicts.

An n-gram of order k is numbered from the number of its first k-1 words and its last word: the
pair is packed into one int64 key, and a sorted array of the keys a corpus holds gives each known
k-gram a column. Captions are then counted into one CSR matrix built directly in row order, which
is what makes `CiderD` fast: pycocoevalcap builds a Python Counter per caption instead.

Where the time goes (25,000 distinct references): splitting the text and numbering the words is
Python work, one pass each over all words; the keys are sorted by a radix sort (a few counting
sorts of 16-bit digits); the counts are sorted per (caption, order) block by scipy.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import count, islice

import numpy as np
from scipy import sparse

_SEP = "\x00"  # joins captions for one split; a caption with it as a word takes the slow path


@dataclass
class Encoded:
    """The n-gram counts of a list of captions, one row per caption."""

    counts: sparse.csr_matrix
    """[captions, columns] term frequencies, sorted by column within each n-gram order (so
    whole rows over the index's own columns); columns past the index's own are n-grams it lacks
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
    lengths = np.fromiter(map(len, map(str.split, captions)), dtype=np.int64, count=len(captions))
    return " ".join(captions).split(), lengths


def _numbered(words: list[str], vocab: dict[str, int], first_new: int, skip: str = ""):
    """(ids of every word, the words `vocab` lacks numbered from `first_new`, `skip` as -1)."""
    ids = defaultdict(count(first_new).__next__, vocab)  # one dict lookup per word
    if skip:
        ids[skip] = -1
    known = len(ids)
    flat = np.fromiter(map(ids.__getitem__, words), dtype=np.int64, count=len(words))
    return flat, list(islice(ids, known, None))


def word_ids(
    captions: Sequence[str], vocab: dict[str, int], first_new: int
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(ids of all words of `captions` [words], word count of each caption [captions], the words
    `vocab` lacks), those words numbered from `first_new` in order of first occurrence."""
    # One split of all captions joined by a separator word gives both the words and where each
    # caption ends: a second split per caption (or a list per caption) costs twice as much.
    words = f" {_SEP} ".join(captions).split()
    ids, new = _numbered(words, vocab, first_new, skip=_SEP)
    ends = np.flatnonzero(ids < 0)
    if len(ends) != max(len(captions) - 1, 0):  # a caption holds the separator as a word
        words, lengths = split_words(captions)
        ids, new = _numbered(words, vocab, first_new)
        return ids, lengths, new
    lengths = np.diff(ends, prepend=-1, append=len(ids)) - 1 if len(captions) else ends
    return ids[ids >= 0], lengths, new


def _positions(lengths: np.ndarray, k: int) -> np.ndarray:
    """Flat word positions where a k-gram starts (inside one caption)."""
    per_caption = np.maximum(lengths - k + 1, 0)
    skip = np.repeat(
        np.cumsum(lengths) - lengths - (np.cumsum(per_caption) - per_caption), per_caption
    )
    return np.arange(per_caption.sum()) + skip


def _radix_argsort(keys: np.ndarray, bound: int) -> np.ndarray:
    """np.argsort(keys, kind="stable") for keys in [0, bound), by a radix sort on 16-bit digits
    (numpy's stable sort of uint16 is a counting sort): n-gram keys have two or three digits,
    which makes it about twice as fast as numpy's comparison sort."""
    perm = np.arange(len(keys))
    for shift in range(0, max(bound - 1, 1).bit_length(), 16):
        perm = perm[np.argsort((keys[perm] >> shift).astype(np.uint16), kind="stable")]
    return perm


def _unique_inverse(keys: np.ndarray, bound: int) -> tuple[np.ndarray, np.ndarray]:
    """np.unique(keys, return_inverse=True) for keys in [0, bound)."""
    perm = _radix_argsort(keys, bound)
    ordered = keys[perm]
    first = np.empty(len(keys), dtype=bool)
    first[:1] = True
    np.not_equal(ordered[1:], ordered[:-1], out=first[1:])
    inverse = np.empty(len(keys), dtype=np.int64)
    inverse[perm] = np.cumsum(first) - 1
    return ordered[first], inverse


def _counts(cols: list[np.ndarray], lengths: np.ndarray, n_cols: int) -> sparse.csr_matrix:
    """[captions, n_cols] counts from the column of every k-gram occurrence (`cols[k - 1]`, in
    word order), sorted by column within each order. Written straight into CSR blocks, one per
    (caption, order): no COO-to-CSR pass, and sorting short blocks is faster than whole rows."""
    n = len(cols)
    per_block = np.maximum(lengths[:, None] - np.arange(n), 0)  # [captions, n]
    indptr = np.concatenate([[0], np.cumsum(per_block)])
    indices = np.empty(indptr[-1], dtype=np.int32)
    for k, col in enumerate(cols):
        per_caption = per_block[:, k]
        block = np.repeat(indptr[k:-1:n] - (np.cumsum(per_caption) - per_caption), per_caption)
        indices[block + np.arange(len(col))] = col
    blocks = sparse.csr_matrix(
        (np.ones(len(indices)), indices, indptr), shape=(per_block.size, n_cols)
    )
    blocks.sum_duplicates()  # sorts each block's columns, adds up repeats
    return sparse.csr_matrix(
        (blocks.data, blocks.indices, blocks.indptr[::n]), shape=(len(lengths), n_cols)
    )


class NgramIndex:
    """Columns for the 1..n-grams of a corpus of space-tokenized captions."""

    def __init__(self, captions: Sequence[str], n: int = 4):
        self.n = n
        self.corpus = self._build(captions)
        """The n-gram counts of `captions` (the build computes them anyway)."""

    def _build(self, captions: Sequence[str]) -> Encoded:
        ids, lengths, new = word_ids(captions, {}, 0)
        self.words = dict(zip(new, count()))
        vocab = len(new)
        self.keys: list[np.ndarray] = []  # per order >= 2: the sorted keys (prefix, last word)
        self.offsets = [0, vocab]  # first column of each order, then the total
        cols, prefix = [ids], ids  # prefix: column of the (k-1)-gram starting at each word
        for k in range(2, self.n + 1):
            pos = _positions(lengths, k)
            first, known = self.offsets[-2], self.offsets[-1] - self.offsets[-2]
            keys, inverse = _unique_inverse(
                (prefix[pos] - first) * vocab + ids[pos + k - 1], known * vocab
            )
            self.keys.append(keys)
            prefix = np.full(len(ids), -1, dtype=np.int64)
            prefix[pos] = self.offsets[-1] + inverse
            cols.append(prefix[pos])
            self.offsets.append(self.offsets[-1] + len(keys))
        return Encoded(_counts(cols, lengths, self.size), self.column_order(), lengths)

    @property
    def size(self) -> int:
        return self.offsets[-1]

    def column_order(self) -> np.ndarray:
        """[columns] n-gram order minus one of each of the index's columns."""
        return np.repeat(np.arange(self.n), np.diff(self.offsets))

    def _lookup(self, k: int, prefix: np.ndarray, last: np.ndarray) -> np.ndarray:
        """Columns of the k-grams (column of the first k-1 words, id of the last word), -1 for
        those the index lacks."""
        vocab, table = self.offsets[1], self.keys[k - 2]
        known = (prefix < self.offsets[k - 1]) & (last < vocab)  # new words make new n-grams
        keys = (prefix[known] - self.offsets[k - 2]) * vocab + last[known]
        # sorted queries make the binary searches hit the cache: twice as fast
        ordered = _radix_argsort(keys, (self.offsets[k - 1] - self.offsets[k - 2]) * vocab)
        at = np.empty(len(keys), dtype=np.int64)
        at[ordered] = np.searchsorted(table, keys[ordered])
        at = np.minimum(at, max(len(table) - 1, 0))
        found = (table[at] == keys) if len(table) else np.zeros(len(keys), dtype=bool)
        col = np.full(len(prefix), -1, dtype=np.int64)
        col[known] = np.where(found, self.offsets[k - 1] + at, -1)
        return col

    def encode(self, captions: Sequence[str]) -> Encoded:
        """Term frequencies of every 1..n-gram of `captions`, known or not."""
        ids, lengths, new = word_ids(captions, self.words, self.size)
        next_col = words = self.size + len(new)  # word ids are below `words`
        cols, prefix = [ids], ids
        order = [self.column_order(), np.zeros(len(new), dtype=np.int64)]
        for k in range(2, self.n + 1):
            pos = _positions(lengths, k)
            col = self._lookup(k, prefix[pos], ids[pos + k - 1])
            new = col < 0  # n-grams the corpus lacks: numbered after every known column
            fresh, inverse = _unique_inverse(
                prefix[pos][new] * words + ids[pos + k - 1][new], next_col * words
            )
            col[new] = next_col + inverse
            next_col += len(fresh)
            order.append(np.full(len(fresh), k - 1, dtype=np.int64))
            cols.append(col)
            prefix = np.full(len(ids), -1, dtype=np.int64)
            prefix[pos] = col
        return Encoded(_counts(cols, lengths, next_col), np.concatenate(order), lengths)

    def gram_strings(self) -> list[str]:
        """The n-gram of every column, words joined by spaces."""
        strings, vocab = list(self.words), self.offsets[1]
        for first, keys in zip(self.offsets, self.keys):
            prefix, last = keys // vocab + first, keys % vocab
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
