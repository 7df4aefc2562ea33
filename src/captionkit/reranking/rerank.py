"""Re-ranking a model's candidate captions by CIDEr-D: consensus and minimum Bayes risk.

- `consensus` (Devlin et al. 2015, "Exploring nearest neighbor approaches for image captioning"):
  a candidate's score is its CIDEr-D against the captions of the k training images nearest to the
  input image (cosine similarity of pooled encoder features, `NeighbourIndex`), i.e. the mean of
  its CIDEr-D against each of those captions.
- `mbr` (minimum Bayes risk): a candidate's score is its mean CIDEr-D against the image's other
  candidates, the caption the candidates agree on most.

Both use CIDEr-D's document frequencies of the run's training captions (the neighbour index holds
them), on captions tokenized as the metrics tokenize them (the Python PTB tokenizer). The final
rank mixes the re-ranking score with the model's own total log-probability, each min-max scaled
to [0, 1] over the image's candidates: final = (1 - W) x rerank + W x log-probability, so W = 1
keeps the model's order (a beam without length penalty) and W = 0 is pure re-ranking; ties keep
the order the candidates came in.

The default, `auto`, is consensus wherever it can run: a run with a neighbour index (every run
trained since re-ranking exists), decoded by beam search (not greedy, sampled or diverse beams).
It raised CIDEr-D on the 600 training images that 5 cross-validation folds hold out (+0.033,
95% interval +0.009...+0.054) and on test over 27 runs of the default recipe (+0.045); see
docs/experiments.md, "Consensus re-ranking as the default". `none` keeps the beam's own
best, as training's per-epoch validation always does.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import TypeVar

import numpy as np

from captionkit.data import tokenize
from captionkit.decoding import DecodingOptions
from captionkit.errors import CaptionkitError
from captionkit.metrics.cider_d import CiderD, DocumentFrequency, _sum_per_order
from captionkit.metrics.ngrams import NgramIndex
from captionkit.reranking.neighbours import NeighbourIndex

RERANKERS = ("auto", "none", "consensus", "mbr")
CANDIDATE_SOURCES = ("wide_beam", "finished")
T = TypeVar("T")


@dataclass
class RerankOptions:
    """Whether and how to re-rank each image's candidate captions."""

    method: str = "auto"
    """Re-rank each image's candidates: `auto` (`consensus` for a run with a neighbour index
    decoded by beam search, else `none`), `none`, `consensus` (CIDEr-D against the captions of
    the nearest training images) or `mbr` (against the other candidates)."""
    candidates: int = 8
    """Candidates per image: the beam's n-best (the beam is widened to at least this), or the
    samples drawn when decoding samples. 8 rather than Devlin et al.'s 5: chosen on 600 held-out
    training images (BENCHMARKS.md, "The re-ranker's settings")."""
    weight: float = 0.3
    """W of final = (1 - W) x re-ranking score + W x log-probability (both min-max scaled)."""
    k: int = 60
    """Consensus: nearest training images whose captions vote (Devlin et al. 2015 tuned k on
    COCO: 60 is in the range they found best for CIDEr)."""
    candidates_from: str = "wide_beam"
    """Where a beam search's candidates come from: `wide_beam`, a beam widened to `candidates`
    returning its n-best; `finished`, the requested beam keeping `candidates` finished
    hypotheses (`DecodingOptions.finished`), about the plain beam's cost."""

    def __post_init__(self):
        if self.method not in RERANKERS:
            raise CaptionkitError(
                f"rerank must be one of {', '.join(RERANKERS)}, not {self.method!r}"
            )
        if self.candidates < 2 and self.method not in ("none", "auto"):
            raise CaptionkitError(f"rerank_candidates must be at least 2, not {self.candidates}")
        if not 0.0 <= self.weight <= 1.0:
            raise CaptionkitError(f"rerank_weight must be in [0, 1], not {self.weight}")
        if self.k < 1:
            raise CaptionkitError(f"rerank k must be at least 1, not {self.k}")
        if self.candidates_from not in CANDIDATE_SOURCES:
            sources = ", ".join(CANDIDATE_SOURCES)
            raise CaptionkitError(
                f"rerank candidates_from must be one of {sources}, not {self.candidates_from!r}"
            )

    @property
    def active(self) -> bool:
        """Whether candidates are re-ranked (`auto` is not, until `resolved`)."""
        return self.method not in ("none", "auto")

    def resolved(self, indexed: bool, options: DecodingOptions) -> RerankOptions:
        """These options with `auto` made `consensus` or `none`, for a run that has a neighbour
        index or not (`indexed`) decoded with `options`. Greedy, sampled and diverse-beam
        decoding and n-best lists longer than `candidates` are asked for as they are, so `auto`
        leaves them alone."""
        if self.method != "auto":
            return self
        plain_beam = options.beam_size > 1 and not options.sample and options.beam_groups == 1
        on = indexed and plain_beam and options.n_best <= self.candidates
        return dataclasses.replace(self, method="consensus" if on else "none")

    def decoding(self, options: DecodingOptions) -> DecodingOptions:
        """The decoding options that give `candidates` hypotheses per image: as many samples,
        or a beam at least that wide returning its `candidates` best."""
        if not self.active:
            return options
        if options.sample:
            return dataclasses.replace(options, num_samples=self.candidates)
        if self.candidates_from == "finished":
            return dataclasses.replace(options, finished=self.candidates, n_best=self.candidates)
        beam = max(options.beam_size, self.candidates)
        return dataclasses.replace(options, beam_size=beam, n_best=self.candidates)

    def describe(self) -> str:
        """A few words for reports: "consensus (8 candidates, weight 0.3, k=60)", "none"."""
        if not self.active:
            return "none"
        k = f", k={self.k}" if self.method == "consensus" else ""
        source = ", finished of the beam" if self.candidates_from == "finished" else ""
        return f"{self.method} ({self.candidates} candidates{source}, weight {self.weight:g}{k})"

    def describe_decoding(self, options: DecodingOptions) -> str:
        """What decoding with `options` and these (resolved) settings runs, for reports: the
        decoding that gives the candidates, and the re-ranking ("beam 8, rerank consensus (8
        candidates, weight 0.3, k=60)" for the default beam of 3 and 8 candidates)."""
        if not self.active:
            return options.describe()
        return f"{self.decoding(options).describe()}, rerank {self.describe()}"


def cider_text(caption: str) -> str:
    """A caption as re-ranking scores it: its PTB words (the metrics' tokenization)."""
    return " ".join(tokenize(caption))


def min_max(values: np.ndarray) -> np.ndarray:
    """`values` scaled to [0, 1]; all zeros when they are all equal."""
    span = values.max() - values.min()
    return (values - values.min()) / span if span > 0 else np.zeros_like(values, dtype=float)


def mixed(rerank: np.ndarray, logprob: np.ndarray, weight: float) -> np.ndarray:
    """[C] final scores of one image's candidates (higher is better)."""
    return (1.0 - weight) * min_max(np.asarray(rerank, float)) + weight * min_max(
        np.asarray(logprob, float)
    )


def pair_cider(
    texts: Sequence[str],
    hyp: np.ndarray,
    ref: np.ndarray,
    df: DocumentFrequency,
    sigma: float = 6.0,
) -> np.ndarray:
    """[P] CIDEr-D (x10) of `texts[hyp[p]]` against the single reference `texts[ref[p]]`, with
    document frequencies `df`. The n-gram index is of `texts` alone (a few hundred captions),
    each n-gram's frequency looked up in `df`, so nothing of the corpus is rebuilt per call."""
    n = df.index.n
    index = NgramIndex(list(texts), n)
    counts, order = index.corpus.counts, index.column_order()
    idf = np.log(float(df.images)) - np.log(np.maximum(1.0, df.values_for(index)))
    weight = counts.data * idf[counts.indices]
    norm = np.sqrt(_sum_per_order(counts, weight**2, order, n))  # [texts, n]
    vectors = counts.copy()
    vectors.data = weight
    h, r = vectors[hyp], vectors[ref]
    clipped = h.minimum(r).multiply(r).tocsr()  # min(h, r) * r per n-gram
    val = _sum_per_order(clipped, clipped.data, order, n)  # [P, n]
    denom = norm[hyp] * norm[ref]
    val = np.divide(val, denom, out=np.zeros_like(val), where=denom != 0)
    length = np.maximum(index.corpus.lengths - 1, 0).astype(float)  # in bigrams, as pycocoevalcap
    delta = length[hyp] - length[ref]
    return val.mean(axis=1) * np.exp(-(delta**2) / (2 * sigma**2)) * 10.0


class CaptionCorpus:
    """The training captions of a run's neighbour index, tokenized once, with what CIDEr-D needs
    of them built on first use."""

    def __init__(self, index: NeighbourIndex):
        self.index = index
        self.texts = [[cider_text(c) for c in caps] for caps in index.captions]

    @cached_property
    def cider(self) -> CiderD:
        """CIDEr-D against each training image's captions (keyed by index row); its document
        frequencies are those of the training corpus."""
        return CiderD(dict(enumerate(self.texts)))

    @cached_property
    def df(self) -> DocumentFrequency:
        return DocumentFrequency.from_references(dict(enumerate(self.texts)))

    def consensus(self, candidates: Sequence[Sequence[str]], neighbours: np.ndarray) -> list:
        """Per image, [C] mean CIDEr-D of its candidates (tokenized texts) against all captions of
        its neighbour rows (`neighbours` [B, k])."""
        # The mean over neighbours of a candidate's CIDEr-D against each, weighted by their
        # numbers of captions, is its CIDEr-D against all their captions pooled.
        return self.cider.pooled_score(candidates, [rows.tolist() for rows in neighbours])

    def mbr(self, candidates: Sequence[Sequence[str]]) -> list:
        """Per image, [C] mean CIDEr-D of each candidate against the image's other candidates."""
        return mbr_scores(candidates, self.df)


def mbr_scores(candidates: Sequence[Sequence[str]], df: DocumentFrequency) -> list[np.ndarray]:
    """Per image, [C] each candidate's mean CIDEr-D against the other C-1 (tokenized texts)."""
    texts = [c for cands in candidates for c in cands]
    distinct = list(dict.fromkeys(texts))
    if not distinct:
        return [np.zeros(0) for _ in candidates]
    row = {t: i for i, t in enumerate(distinct)}
    hyp, ref, group = [], [], []
    for cands in candidates:
        for i, c in enumerate(cands):
            others = [row[o] for j, o in enumerate(cands) if j != i]
            hyp += [row[c]] * len(others)
            ref += others
            group.append(len(others))
    per_pair = pair_cider(
        distinct, np.array(hyp, dtype=np.int64), np.array(ref, dtype=np.int64), df
    )
    sizes = np.array(group)
    starts = np.cumsum(sizes) - sizes
    sums = np.add.reduceat(per_pair, starts[sizes > 0]) if len(per_pair) else np.zeros(0)
    means = np.zeros(len(sizes))
    means[sizes > 0] = sums / sizes[sizes > 0]
    return np.split(means, np.cumsum([len(c) for c in candidates])[:-1])


class Reranker:
    """Re-ranks each image's candidate captions by `options.method`, over a run's training
    captions (its `NeighbourIndex`; None for a run without one, which then cannot re-rank)."""

    def __init__(
        self,
        options: RerankOptions,
        index: NeighbourIndex | None,
        run: str = "the run",
        corpus: CaptionCorpus | None = None,
    ):
        """`corpus`: the `CaptionCorpus` of `index` when one was built already (it is slow to
        build for a large index, and the same for any options)."""
        if options.active and index is None:
            raise CaptionkitError(
                f"--rerank {options.method}: {run} has no neighbour index (neighbours.json, "
                "written by training since re-ranking exists): train it again, or index it "
                "with captionkit.evaluation.run_index.index_run(run, data)"
            )
        self.options, self.index = options, index
        if corpus is None and index is not None:
            corpus = CaptionCorpus(index)
        self.corpus = corpus

    def scores(self, captions: Sequence[Sequence[str]], pooled=None) -> list[np.ndarray]:
        """Per image, [C] re-ranking scores of its raw candidate `captions`; `pooled` [B, D]:
        the images' pooled features (consensus needs them)."""
        texts = [[cider_text(c) for c in caps] for caps in captions]
        if self.options.method == "mbr":
            return self.corpus.mbr(texts)
        if pooled is None:
            raise CaptionkitError("consensus re-ranking needs the images' pooled features")
        _, rows = self.index.nearest(pooled, self.options.k)
        return self.corpus.consensus(texts, rows)

    def order(
        self, captions: Sequence[Sequence[str]], logprobs: Sequence[Sequence[float]], pooled=None
    ) -> list[list[int]]:
        """Per image, its candidates' positions, best first (the model's order when not
        re-ranking)."""
        if not self.options.active:
            return [list(range(len(caps))) for caps in captions]
        out = []
        for rerank, lp in zip(self.scores(captions, pooled), logprobs):
            final = mixed(rerank, np.asarray(lp, dtype=float), self.options.weight)
            out.append(np.argsort(-final, kind="stable").tolist())
        return out

    def rerank(
        self, results: Sequence[Sequence[T]], text: Callable[[T], str], pooled=None
    ) -> list[list[T]]:
        """Each image's hypotheses (`DecodingResult`s, or anything with a `score`, the total
        log-probability), best first; `text` gives a hypothesis's raw caption."""
        captions = [[text(h) for h in hyps] for hyps in results]
        logprobs = [[h.score for h in hyps] for hyps in results]
        order = self.order(captions, logprobs, pooled)
        return [[hyps[i] for i in rank] for hyps, rank in zip(results, order)]


def run_reranker(
    trained,
    options: RerankOptions,
    reuse: Reranker | None = None,
    decoding: DecodingOptions | None = None,
) -> Reranker:
    """The re-ranker of a loaded run decoding with `decoding` (default `DecodingOptions()`),
    `auto` resolved: its neighbour index is read only when re-ranking, and must come from the
    run's own encoder. `reuse`: an earlier re-ranker of the same run, whose index and tokenized
    captions serve again."""
    run = str(trained.run_dir or "the run")
    indexed = trained.run_dir is not None and NeighbourIndex.exists(run)
    options = options.resolved(indexed, decoding or DecodingOptions())
    if reuse is not None and reuse.index is not None:
        return Reranker(options, reuse.index, run, reuse.corpus)
    index = None
    if options.active and NeighbourIndex.exists(run):
        index = NeighbourIndex.load(run)
        fingerprint = trained.encoder.get("fingerprint")
        if index.encoder is not None and index.encoder != fingerprint:
            raise CaptionkitError(
                f"{run}: its neighbour index holds the features of another "
                "encoder than the run's (rebuild it with index_run)"
            )
    return Reranker(options, index, run)
