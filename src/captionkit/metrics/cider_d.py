"""A vectorised CIDEr-D that gives pycocoevalcap's numbers, fast enough for SCST rewards.

pycocoevalcap scores a caption against its image's references with Python dicts, one pair at a
time. Here every caption and reference is a sparse row of tf-idf weights over an n-gram index
(`ngrams.NgramIndex`, built with numpy), and all (caption, reference) pairs are scored by a few
sparse-matrix operations. The formula is the same: idf from the number of images whose references
contain the n-gram, the clipped product min(h, r)·r per n-gram order divided by the vector norms,
a Gaussian penalty on the length difference (counted in bigrams, as pycocoevalcap does), averaged
over references and orders, x10.

Document frequencies come from the references being scored (pycocoevalcap's `Cider`) or from a
given corpus (`DocumentFrequency`, e.g. the training references for SCST), which can be saved to
JSON and loaded back. Captions are pre-tokenized strings (words separated by spaces).
"""

from __future__ import annotations

import json
from collections.abc import Hashable, Iterable, Mapping, Sequence
from itertools import chain, count
from pathlib import Path

import numpy as np
from scipy import sparse

from captionkit.errors import CaptionkitError
from captionkit.metrics.ngrams import Encoded, NgramIndex

DF_FORMAT = "captionkit-cider-df"


def _flatten(
    references: Mapping[Hashable, Sequence[str]],
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """The distinct references, the row among them of every reference (image by image) and how
    many references each image has. Vectorising each distinct text once matters when images
    share references (or one is scored under several keys)."""
    sizes = np.fromiter(map(len, references.values()), dtype=np.int64, count=len(references))
    if (sizes == 0).any():
        raise CaptionkitError("CIDEr-D: an image has no reference captions")
    distinct, rows = _numbered(chain.from_iterable(references.values()))
    return distinct, rows, sizes


def _numbered(texts: Iterable[str]) -> tuple[list[str], np.ndarray]:
    """(the distinct texts in order of first occurrence, the number of each text among them)."""
    texts = list(texts)
    number = dict(zip(dict.fromkeys(texts), count()))
    ids = np.fromiter(map(number.__getitem__, texts), dtype=np.int64, count=len(texts))
    return list(number), ids


def _sum_per_order(
    matrix: sparse.csr_matrix, values: np.ndarray, order: np.ndarray, n: int
) -> np.ndarray:
    """[rows of `matrix`, n] sums of `values` (one per stored entry of `matrix`) by row and
    n-gram order of the entry's column (`order`: [columns])."""
    # float64 also when nothing matched: an empty product can come back as integers.
    values = np.asarray(values, dtype=np.float64)
    by_order = sparse.csr_matrix(
        (values, order[matrix.indices], matrix.indptr), shape=(matrix.shape[0], n)
    )
    return by_order.toarray()  # adds up the entries of each (row, order)


class DocumentFrequency:
    """In how many images' references each n-gram occurs, over one reference corpus."""

    def __init__(self, index: NgramIndex, df: np.ndarray, images: int):
        self.index = index
        self.df = df
        """[index columns] number of images whose references contain the n-gram."""
        self.images = images

    @classmethod
    def from_references(
        cls, references: Mapping[Hashable, Sequence[str]], n: int = 4
    ) -> DocumentFrequency:
        """Document frequencies of `references` (image key -> tokenized captions)."""
        return cls._from_flat(*_flatten(references), n)

    @classmethod
    def _from_flat(
        cls, distinct: list[str], rows: np.ndarray, sizes: np.ndarray, n: int
    ) -> DocumentFrequency:
        """From `_flatten`'s (distinct references, row of every reference, references per
        image)."""
        index = NgramIndex(distinct, n)
        counts = index.corpus.counts
        present = sparse.csr_matrix(
            (np.ones(counts.nnz), counts.indices, counts.indptr), shape=counts.shape
        )
        image_of = np.repeat(np.arange(len(sizes)), sizes)
        by_image = sparse.csr_matrix(
            (np.ones(len(rows)), (image_of, rows)), shape=(len(sizes), len(distinct))
        )
        # [images, columns] without duplicates: each stored entry is one (image, n-gram) pair
        df = np.bincount((by_image @ present).indices, minlength=index.size)
        return cls(index, df.astype(np.int64), len(sizes))

    def values_for(self, index: NgramIndex) -> np.ndarray:
        """[columns of `index`] the document frequency of its n-grams (0 for unseen ones)."""
        if index is self.index:
            return self.df
        columns = self.index.columns_of(index.gram_strings())
        return np.where(columns >= 0, self.df[columns], 0)

    def save(self, path: str | Path) -> None:
        """Write as JSON: n, the number of images and each n-gram's count."""
        grams = dict(zip(self.index.gram_strings(), self.df.tolist()))
        doc = {"format": DF_FORMAT, "n": self.index.n, "images": self.images, "df": grams}
        Path(path).write_text(json.dumps(doc, ensure_ascii=False))

    @classmethod
    def load(cls, path: str | Path) -> DocumentFrequency:
        try:
            doc = json.loads(Path(path).read_text())
        except (OSError, ValueError) as e:
            raise CaptionkitError(f"{path}: cannot read CIDEr-D document frequencies ({e})") from e
        if not isinstance(doc, dict) or doc.get("format") != DF_FORMAT:
            raise CaptionkitError(f"{path}: not a CIDEr-D document frequency file")
        grams = list(doc["df"])
        index = NgramIndex(grams, doc["n"])
        columns, counts = index.columns_of(grams), np.array(list(doc["df"].values()))
        if (columns < 0).any():  # only an n-gram longer than n (or empty) has no column
            raise CaptionkitError(f"{path}: n-grams of more than {doc['n']} words")
        df = np.zeros(index.size, dtype=np.int64)
        df[columns] = counts
        return cls(index, df, int(doc["images"]))


class CiderD:
    """CIDEr-D of captions against `references` (image key -> tokenized captions).

    Without `df`, document frequencies come from `references` themselves, which reproduces
    pycocoevalcap's `Cider`; SCST gives the training corpus's `DocumentFrequency` instead.
    """

    def __init__(
        self,
        references: Mapping[Hashable, Sequence[str]],
        n: int = 4,
        sigma: float = 6.0,
        df: DocumentFrequency | None = None,
    ):
        self.n, self.sigma = n, sigma
        distinct, self.ref_rows, sizes = _flatten(references)
        if df is None:
            df = DocumentFrequency._from_flat(distinct, self.ref_rows, sizes, n)
            self.index, encoded = df.index, df.index.corpus
        elif df.index.n != n:
            raise CaptionkitError(f"CIDEr-D: document frequencies of {df.index.n}-grams, not {n}")
        else:  # the corpus's n-grams too: a caption's n-gram only they hold still has its idf
            self.index = NgramIndex(distinct + df.index.gram_strings(), n)
            encoded = self.index.corpus.head(len(distinct))
        self.log_images = np.log(float(df.images))
        self.idf = self.log_images - np.log(np.maximum(1.0, df.values_for(self.index)))
        self.order = self.index.column_order()
        self.refs, self.ref_norm, self.ref_length = self._vectors(encoded)
        self.ref_start = dict(zip(references, np.cumsum(sizes) - sizes))
        self.ref_size = dict(zip(references, sizes))

    def _vectors(self, encoded: Encoded):
        """Term counts over the index's columns (CSR: an n-gram the index lacks matches no
        reference), tf-idf norms per order [N, n] and lengths [N]."""
        counts, size = encoded.counts, self.index.size
        idf = np.full(counts.shape[1], self.log_images)  # n-grams no corpus image has: df 0
        idf[:size] = self.idf
        weight = counts.data * idf[counts.indices]
        norm_sq = _sum_per_order(counts, weight**2, encoded.order, self.n)
        data, indices, indptr = counts.data, counts.indices, counts.indptr
        if counts.shape[1] > size:
            known = indices < size
            indptr = np.concatenate([[0], np.cumsum(known)])[indptr]
            data, indices = data[known], indices[known]
        matrix = sparse.csr_matrix((data, indices, indptr), shape=(counts.shape[0], size))
        matrix.has_sorted_indices = True
        return matrix, np.sqrt(norm_sq), np.maximum(encoded.lengths - 1, 0).astype(float)

    def score(self, captions: Sequence[str], keys: Sequence[Hashable]) -> np.ndarray:
        """CIDEr-D of `captions[i]` against the references of image `keys[i]`, per caption."""
        # Each distinct caption is vectorised once (SCST samples and baselines repeat a lot).
        unique, which = _numbered(map(str, captions))
        hyp, hyp_norm, hyp_length = self._vectors(self.index.encode(unique))
        sizes = np.array([self.ref_size[k] for k in keys], dtype=np.int64)
        starts = np.array([self.ref_start[k] for k in keys], dtype=np.int64)
        cand = np.repeat(which, sizes)  # one row per (caption, reference) pair
        ref = self.ref_rows[_ranges(starts, sizes)]  # [pairs] rows of the distinct references
        h, r = hyp[cand], self.refs[ref]
        # min(h, r)·r of the tf-idf weights is min(a, b)·b·idf² of the counts a, b
        clipped = h.minimum(r).multiply(r).tocsr()
        weights = clipped.data * self.idf[clipped.indices] ** 2
        val = _sum_per_order(clipped, weights, self.order, self.n)
        per_pair = self._pair_scores(val, hyp_norm[cand], hyp_length[cand], ref)
        return np.add.reduceat(per_pair, np.cumsum(sizes) - sizes) / sizes * 10.0

    def pooled_score(
        self, captions: Sequence[Sequence[str]], keys: Sequence[Sequence[Hashable]]
    ) -> list[np.ndarray]:
        """Per group, [C] the CIDEr-D of each of its `captions` against the references of all
        its `keys` pooled (the mean over every one of them, x10): a caption's consensus with a
        neighbourhood of images. With one key this is `score`."""
        counts = np.array([len(c) for c in captions], dtype=np.int64)  # [G] captions per group
        if not counts.sum():
            return [np.zeros(0) for _ in captions]
        sizes = [np.array([self.ref_size[k] for k in ks], dtype=np.int64) for ks in keys]
        refs = np.array([s.sum() for s in sizes], dtype=np.int64)  # [G] references per group
        if (refs[counts > 0] == 0).any():
            raise CaptionkitError("CIDEr-D: captions to score against no reference")
        starts = np.concatenate([[self.ref_start[k] for k in ks] for ks in keys]).astype(np.int64)
        ref = self.ref_rows[_ranges(starts, np.concatenate(sizes))]  # [R] all groups' references
        unique, which = _numbered(map(str, chain.from_iterable(captions)))
        hyp, hyp_norm, hyp_length = self._vectors(self.index.encode(unique))
        blocks = _Blocks(counts, refs)
        val = self._clipped(hyp[which], self.refs[ref], blocks)  # [pairs, n]
        cand = which[blocks.caption]  # [pairs]
        per_pair = self._pair_scores(val, hyp_norm[cand], hyp_length[cand], ref[blocks.reference])
        return np.split(blocks.per_caption(per_pair) * 10.0, np.cumsum(counts)[:-1])

    def _pair_scores(self, val, hyp_norm, hyp_length, ref) -> np.ndarray:
        """[pairs] each pair's score from its clipped products per order `val` [pairs, n], its
        caption's norms [pairs, n] and length [pairs] and its reference rows [pairs]: the cosine
        per order, averaged, times the Gaussian length penalty."""
        denom = hyp_norm * self.ref_norm[ref]
        val = np.divide(val, denom, out=np.zeros_like(val), where=denom != 0)
        delta = hyp_length - self.ref_length[ref]
        return val.mean(axis=1) * np.exp(-(delta**2) / (2 * self.sigma**2))

    def _clipped(self, hyp: sparse.csr_matrix, refs: sparse.csr_matrix, blocks: _Blocks):
        """[pairs, n] Σ min(h, r)·r per n-gram order of every pair of `blocks`, for the term
        counts `hyp` [captions, V] and `refs` [references, V] (h, r: their tf-idf weights).

        Only n-grams shared inside a group add anything, so the columns are renumbered by (group,
        n-gram of its captions): a sparse product then visits just the shared entries, where
        indexing one reference row per pair (a caption's 8 consensus candidates x 300 captions of
        60 neighbours) copied them all. The min goes into the product as a sum over levels t of
        the counts a, b: min(a, b)·b = Σ_t [a ≥ t]·[b ≥ t]·b."""
        size, n = self.index.size, self.n
        h_row = np.repeat(np.arange(hyp.shape[0]), np.diff(hyp.indptr))
        columns, h_col = np.unique(
            blocks.caption_group[h_row] * size + hyp.indices, return_inverse=True
        )
        r_row = np.repeat(np.arange(refs.shape[0]), np.diff(refs.indptr))
        r_key = blocks.reference_group[r_row] * size + refs.indices
        r_col = np.minimum(np.searchsorted(columns, r_key), max(len(columns) - 1, 0))
        shared = columns[r_col] == r_key if len(columns) else np.zeros(len(r_key), bool)
        r_row, r_col, b = r_row[shared], r_col[shared], refs.data[shared]
        idf, order = self.idf[columns % size], self.order[columns % size]
        a, found = hyp.data, []
        for t in range(1, int(a.max(initial=0)) + 1):
            at, bt = a >= t, b >= t
            left = sparse.csr_matrix(
                (idf[h_col[at]], (h_row[at], h_col[at])), shape=(hyp.shape[0], len(columns))
            )
            right = sparse.csr_matrix(
                (idf[r_col[bt]] * b[bt], (r_col[bt], r_row[bt] * n + order[r_col[bt]])),
                shape=(len(columns), refs.shape[0] * n),
            )
            found.append((left @ right).tocoo())  # [captions, references x orders]
        caption = np.concatenate([p.row for p in found] + [np.zeros(0, np.int64)])
        column = np.concatenate([p.col for p in found] + [np.zeros(0, np.int64)])
        weights = np.concatenate([p.data for p in found] + [np.zeros(0)])
        at = blocks.pair(caption.astype(np.int64), column // n) * n + column % n
        # float64 also when nothing is shared: an empty bincount comes back as integers.
        sums = np.bincount(at, weights, minlength=blocks.size * n).astype(np.float64)
        return sums.reshape(-1, n)

    def corpus_score(self, predictions: Mapping[Hashable, str]) -> tuple[float, np.ndarray]:
        """(mean, per-image scores) like pycocoevalcap's `Cider.compute_score`."""
        keys = list(predictions)
        scores = self.score([predictions[k] for k in keys], keys)
        return float(scores.mean()), scores


def _ranges(starts: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """starts[0], starts[0] + 1, .., starts[0] + sizes[0] - 1, starts[1], ..: the ranges laid end
    to end."""
    return np.repeat(starts - np.cumsum(sizes) + sizes, sizes) + np.arange(sizes.sum())


class _Blocks:
    """The (caption, reference) pairs of groups scored all against all: group g's C_g captions x
    R_g references, row-major, one group after another. Captions and references are numbered
    through all groups."""

    def __init__(self, captions: np.ndarray, references: np.ndarray):
        self.captions, self.references = captions, references  # [G] each
        self.first_caption = np.cumsum(captions) - captions  # [G]
        self.first_reference = np.cumsum(references) - references  # [G]
        per_group = captions * references
        self.first_pair, self.size = np.cumsum(per_group) - per_group, int(per_group.sum())
        groups = np.arange(len(captions))
        self.caption_group = np.repeat(groups, captions)  # [captions]
        self.reference_group = np.repeat(groups, references)  # [references]
        group = np.repeat(groups, per_group)  # [pairs]
        local = np.arange(self.size) - self.first_pair[group]
        self.caption = self.first_caption[group] + local // references[group]  # [pairs]
        self.reference = self.first_reference[group] + local % references[group]  # [pairs]

    def pair(self, caption: np.ndarray, reference: np.ndarray) -> np.ndarray:
        """The pair numbers of captions and references [m] of the same groups."""
        g = self.caption_group[caption]
        within = (caption - self.first_caption[g]) * self.references[g]
        return self.first_pair[g] + within + reference - self.first_reference[g]

    def per_caption(self, values: np.ndarray) -> np.ndarray:
        """[captions] the mean of `values` [pairs] over each caption's references."""
        runs = np.repeat(self.references, self.captions)  # [captions] every one > 0
        return np.add.reduceat(values, np.cumsum(runs) - runs) / runs
