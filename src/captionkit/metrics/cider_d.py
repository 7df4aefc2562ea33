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
        """tf-idf rows over the index's columns (CSR), norms per order [N, n], lengths [N]."""
        counts, size = encoded.counts, self.index.size
        idf = np.full(counts.shape[1], self.log_images)  # n-grams no corpus image has: df 0
        idf[:size] = self.idf
        weight = counts.data * idf[counts.indices]
        norm_sq = _sum_per_order(counts, weight**2, encoded.order, self.n)
        indices, indptr = counts.indices, counts.indptr
        if counts.shape[1] > size:  # only known n-grams can match a reference
            known = indices < size
            indptr = np.concatenate([[0], np.cumsum(known)])[indptr]
            weight, indices = weight[known], indices[known]
        matrix = sparse.csr_matrix((weight, indices, indptr), shape=(counts.shape[0], size))
        matrix.has_sorted_indices = True
        return matrix, np.sqrt(norm_sq), np.maximum(encoded.lengths - 1, 0).astype(float)

    def score(self, captions: Sequence[str], keys: Sequence[Hashable]) -> np.ndarray:
        """CIDEr-D of `captions[i]` against the references of image `keys[i]`, per caption."""
        # Each distinct caption is vectorised once (SCST samples and baselines repeat a lot).
        unique, which = _numbered(map(str, captions))
        hyp, hyp_norm, hyp_length = self._vectors(self.index.encode(unique))
        sizes = np.array([self.ref_size[k] for k in keys])
        starts = np.array([self.ref_start[k] for k in keys])
        cand = np.repeat(which, sizes)  # one row per (caption, reference) pair
        ref = (
            np.repeat(starts, sizes)
            + np.arange(sizes.sum())
            - np.repeat(np.cumsum(sizes) - sizes, sizes)
        )
        ref = self.ref_rows[ref]  # [pairs] rows of the distinct references
        h, r = hyp[cand], self.refs[ref]
        clipped = h.minimum(r).multiply(r)  # min(h, r) * r, per n-gram
        val = _sum_per_order(clipped, clipped.data, self.order, self.n)
        denom = hyp_norm[cand] * self.ref_norm[ref]
        val = np.divide(val, denom, out=val.copy(), where=denom != 0)
        delta = hyp_length[cand] - self.ref_length[ref]
        val *= np.exp(-(delta**2) / (2 * self.sigma**2))[:, None]
        per_caption = np.add.reduceat(val.mean(axis=1), np.cumsum(sizes) - sizes)
        return per_caption / sizes * 10.0

    def corpus_score(self, predictions: Mapping[Hashable, str]) -> tuple[float, np.ndarray]:
        """(mean, per-image scores) like pycocoevalcap's `Cider.compute_score`."""
        keys = list(predictions)
        scores = self.score([predictions[k] for k in keys], keys)
        return float(scores.mean()), scores
