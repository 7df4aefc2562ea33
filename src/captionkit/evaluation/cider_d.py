"""A vectorised CIDEr-D that gives pycocoevalcap's numbers, fast enough for SCST rewards.

pycocoevalcap scores a caption against its image's references with Python dicts, one pair at a
time. Here every caption and reference is a sparse row of tf-idf weights over an n-gram index, and
all (caption, reference) pairs are scored by a few sparse-matrix operations. The formula is the
same: idf from the number of images whose references contain the n-gram, the clipped product
min(h, r)·r per n-gram order divided by the vector norms, a Gaussian penalty on the length
difference (counted in bigrams, as pycocoevalcap does), averaged over references and orders, x10.

Captions are pre-tokenized strings (words separated by spaces), as pycocoevalcap expects.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Mapping, Sequence

import numpy as np
from scipy import sparse


def ngram_counts(caption: str, n: int = 4) -> Counter:
    """Counts of the 1..n-grams of a space-tokenized caption."""
    words = caption.split()
    return Counter(
        tuple(words[i : i + k]) for k in range(1, n + 1) for i in range(len(words) - k + 1)
    )


class CiderD:
    """CIDEr-D with document frequencies from `references` (image key -> tokenized captions).

    Scoring the same images that define the document frequencies reproduces pycocoevalcap's
    `Cider`; SCST builds one `CiderD` from the training references and scores samples against it.
    """

    def __init__(
        self, references: Mapping[Hashable, Sequence[str]], n: int = 4, sigma: float = 6.0
    ):
        self.n, self.sigma = n, sigma
        self.index: dict[tuple, int] = {}
        ref_counts = {key: [ngram_counts(r, n) for r in refs] for key, refs in references.items()}
        df: Counter = Counter()
        for counts in ref_counts.values():
            df.update({g for c in counts for g in c})
        for gram in df:
            self.index[gram] = len(self.index)
        self.ref_len = np.log(float(len(references)))
        self.idf = self.ref_len - np.log(np.maximum(1.0, np.array([df[g] for g in self.index])))
        self.order = np.array([len(g) - 1 for g in self.index], dtype=np.int64)
        self.order_onehot = sparse.csr_matrix(
            (np.ones(len(self.order)), (np.arange(len(self.order)), self.order)),
            shape=(len(self.order), n),
        )
        flat = [c for counts in ref_counts.values() for c in counts]
        self.refs, self.ref_norm, self.ref_length = self._vectors(flat)
        sizes = np.array([len(c) for c in ref_counts.values()])
        self.ref_start = dict(zip(ref_counts, np.concatenate([[0], np.cumsum(sizes)[:-1]])))
        self.ref_size = dict(zip(ref_counts, sizes))

    def _vectors(self, counts: list[Counter]):
        """tf-idf rows (CSR), norms per order [N, n] and lengths in bigrams [N]."""
        rows, cols, vals = [], [], []
        norm_sq = np.zeros((len(counts), self.n))
        length = np.zeros(len(counts))
        for i, c in enumerate(counts):
            for gram, tf in c.items():
                k = len(gram) - 1
                j = self.index.get(gram)
                weight = tf * (self.idf[j] if j is not None else self.ref_len)
                norm_sq[i, k] += weight * weight
                if k == 1:
                    length[i] += tf
                if j is not None:  # an n-gram no reference has cannot match: norm only
                    rows.append(i), cols.append(j), vals.append(weight)
        matrix = sparse.csr_matrix((vals, (rows, cols)), shape=(len(counts), len(self.index)))
        return matrix, np.sqrt(norm_sq), length

    def score(self, captions: Sequence[str], keys: Sequence[Hashable]) -> np.ndarray:
        """CIDEr-D of `captions[i]` against the references of image `keys[i]`, per caption."""
        # Each distinct caption is vectorised once (SCST samples and baselines repeat a lot).
        unique, which = np.unique(
            np.asarray(captions, dtype=object).astype(str), return_inverse=True
        )
        hyp, hyp_norm, hyp_length = self._vectors([ngram_counts(c, self.n) for c in unique])
        sizes = np.array([self.ref_size[k] for k in keys])
        cand = np.repeat(which, sizes)  # one row per (caption, reference) pair
        ref = np.concatenate([np.arange(self.ref_start[k], self.ref_start[k] + self.ref_size[k])
                              for k in keys])  # fmt: skip
        h, r = hyp[cand], self.refs[ref]
        clipped = h.minimum(r).multiply(r)  # min(h, r) * r, per n-gram
        val = np.asarray((clipped @ self.order_onehot).todense())  # [pairs, n]
        denom = hyp_norm[cand] * self.ref_norm[ref]
        val = np.divide(val, denom, out=val.copy(), where=denom != 0)
        delta = hyp_length[cand] - self.ref_length[ref]
        val *= np.exp(-(delta**2) / (2 * self.sigma**2))[:, None]
        per_caption = np.add.reduceat(
            val.mean(axis=1), np.concatenate([[0], np.cumsum(sizes)[:-1]])
        )
        return per_caption / sizes * 10.0

    def corpus_score(self, predictions: Mapping[Hashable, str]) -> tuple[float, np.ndarray]:
        """(mean, per-image scores) like pycocoevalcap's `Cider.compute_score`."""
        keys = list(predictions)
        scores = self.score([predictions[k] for k in keys], keys)
        return float(scores.mean()), scores
