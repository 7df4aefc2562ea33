"""Turning a model's step function into captions: batched greedy, beam search and sampling.

Every strategy decodes a batch of images at once and returns, per image, a list of
`DecodingResult`s. A hypothesis is a word sequence w1..wn (n <= max_length) followed by `<eos>`;
its score is the sum of the model's log-probabilities of all its tokens, `<eos>` included (after
the logit filters, before any sampling temperature). At step max_length only `<eos>` is allowed, so
every hypothesis ends, and the brute-force reference in the tests can enumerate the same set.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from captionkit.data.vocab import Vocabulary
from captionkit.errors import CaptionkitError

DEFAULT_MAX_LENGTH = 20


@dataclass
class DecodingOptions:
    """How to decode: greedy (`beam_size=1`), beam search, or sampling (`sample=True`)."""

    beam_size: int = 1
    """Hypotheses kept per image; 1 means greedy decoding."""
    max_length: int | None = None
    """Most tokens in a caption, `<eos>` not counted. None: the run's training `max_length` when
    decoding a trained run (`evaluate_run`, `Captioner`), else 20."""
    n_best: int = 1
    """Beam search: hypotheses returned per image (at most `beam_size`)."""
    forbid_unk: bool = False
    """Never generate `<unk>`."""
    length_penalty: float | str | None = None
    """Beam ranking: None = total log-probability, "average" = per token, a float α = GNMT's
    score / ((5 + length) / 6) ** α."""
    no_repeat_ngram_size: int = 0
    """Never generate an n-gram of this size twice in one caption (0 = off)."""
    sample: bool = False
    """Sample each token instead of taking the most probable."""
    num_samples: int = 1
    """Sampling: captions drawn per image."""
    temperature: float = 1.0
    """Sampling: divide the logits by this before drawing."""
    top_k: int = 0
    """Sampling: draw from the k most probable tokens only (0 = all)."""
    top_p: float = 1.0
    """Sampling: draw from the smallest set of tokens whose probability reaches p (nucleus)."""
    seed: int | None = None
    """Sampling: seed of the random generator (None = torch's global one)."""
    attention: bool = False
    """Return each token's attention weights over the grid (models that attend): off by default,
    as collecting them slows beam search by about a tenth."""

    def __post_init__(self):
        """Refuse values no strategy can use, naming the field (a user may have typed them)."""
        checks = [
            ("beam_size", self.beam_size >= 1, "at least 1"),
            ("max_length", self.max_length is None or self.max_length >= 1, "at least 1"),
            ("n_best", self.n_best >= 1, "at least 1"),
            ("no_repeat_ngram_size", self.no_repeat_ngram_size >= 0, "0 (off) or more"),
            ("num_samples", self.num_samples >= 1, "at least 1"),
            ("temperature", self.temperature > 0, "above 0"),
            ("top_k", self.top_k >= 0, "0 (off) or more"),
            ("top_p", 0 < self.top_p <= 1, "in (0, 1]"),
        ]
        for name, ok, expected in checks:
            if not ok:
                raise CaptionkitError(f"{name} must be {expected}, not {getattr(self, name)}")
        penalty = self.length_penalty
        if not (penalty in (None, "average") or _is_finite_number(penalty)):
            raise CaptionkitError(
                f"length_penalty must be None, 'average' or a number, not {penalty!r}"
            )

    def describe(self) -> str:
        """A few words for reports: "beam 3", "greedy, no <unk>", "sampling (T=0.7, top-p 0.9)"."""
        if self.sample:
            name, extra = "sampling", [f"{self.num_samples} per image"] * (self.num_samples > 1)
            extra += [f"T={self.temperature:g}"] * (self.temperature != 1.0)
            extra += [f"top-k {self.top_k}"] * (self.top_k > 0)
            extra += [f"top-p {self.top_p:g}"] * (self.top_p < 1.0)
            extra += [f"seed {self.seed}"] * (self.seed is not None)
        else:
            name = "greedy" if self.beam_size == 1 else f"beam {self.beam_size}"
            extra = [f"length penalty {self.length_penalty}"] * (self.length_penalty is not None)
        n = self.no_repeat_ngram_size
        extra += [f"no repeated {n}-grams"] * (n > 0)
        extra += ["no <unk>"] * self.forbid_unk
        return f"{name} ({', '.join(extra)})" if extra else name


def _is_finite_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass
class DecodingResult:
    """One hypothesis: token ids without `<bos>`/`<eos>`, its total log-probability, and when
    `DecodingOptions.attention` asks for them (models with attention) the weights over the grid
    for every generated token, `<eos>` included (`len(tokens) + 1` rows of L weights)."""

    tokens: list[int]
    score: float
    attention: list[list[float]] | None = None


class SuppressTokens:
    """Logit filter: tokens that must never be generated get -inf."""

    def __init__(self, token_ids: list[int]):
        self.token_ids = token_ids

    def apply(self, logits: torch.Tensor, seqs: torch.Tensor) -> torch.Tensor:
        logits[..., self.token_ids] = -torch.inf
        return logits


class NoRepeatNGram:
    """Logit filter: a token that would complete an n-gram already in the caption gets -inf."""

    def __init__(self, n: int):
        self.n = n

    def apply(self, logits: torch.Tensor, seqs: torch.Tensor) -> torch.Tensor:
        n, t = self.n, seqs.shape[1]
        if t < n - 1 or n < 1:
            return logits
        rows = seqs.tolist()
        for i, seq in enumerate(rows):
            prefix = seq[t - n + 1 :] if n > 1 else []
            banned = {seq[j + n - 1] for j in range(t - n + 1) if seq[j : j + n - 1] == prefix}
            if banned:
                logits[i, list(banned)] = -torch.inf
        return logits


def _step_logprobs(model, tokens, state, filters, seqs, last: bool):
    """Log-probabilities [N, V] of the next token after filtering, and the new state."""
    logits, state = model.step(tokens, state)
    logits = logits.float()
    for f in filters:
        logits = f.apply(logits, seqs)
    logprobs = F.log_softmax(logits, dim=-1)
    if last:  # the length limit: every hypothesis ends here, with <eos>'s real probability
        eos = logprobs[:, Vocabulary.eos_id].clone()
        logprobs.fill_(-torch.inf)
        logprobs[:, Vocabulary.eos_id] = eos
    return logprobs, state


def _expand(state: dict, k: int) -> dict:
    return {n: v.repeat_interleave(k, dim=0) for n, v in state.items()}


def _attention_rows(steps: list[torch.Tensor], row: int, length: int) -> list[list[float]] | None:
    """Per-token attention of one hypothesis from per-step [N, L] tensors (None if no attention)."""
    if not steps:
        return None
    return [steps[t][row].tolist() for t in range(length)]


class GreedyDecoder:
    """The most probable next token at every step, for all images at once."""

    def __init__(self, options: DecodingOptions, filters: list):
        self.options, self.filters = options, filters
        self.copies = 1  # hypotheses per image

    def choose(self, logprobs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(log-probability, token) of the next token of every row."""
        return logprobs.max(dim=-1)

    def decode(self, model, pooled, grid) -> list[list[DecodingResult]]:
        k, device = self.copies, pooled.device
        state = _expand(model.init_state(pooled, grid), k)
        n = pooled.shape[0] * k
        tokens = torch.full((n,), Vocabulary.bos_id, dtype=torch.long, device=device)
        scores = torch.zeros(n, device=device)
        finished = torch.zeros(n, dtype=torch.bool, device=device)
        seqs, attention = torch.zeros(n, 0, dtype=torch.long, device=device), []
        for t in range(self.options.max_length + 1):
            last = t == self.options.max_length
            logprobs, state = _step_logprobs(model, tokens, state, self.filters, seqs, last)
            best, tokens = self.choose(logprobs)
            scores += torch.where(finished, 0.0, best)
            tokens = torch.where(finished, Vocabulary.pad_id, tokens)
            seqs = torch.cat([seqs, tokens[:, None]], dim=1)
            if self.options.attention and "attention" in state:
                attention.append(state["attention"])
            finished |= tokens == Vocabulary.eos_id
            if finished.all():
                break
        results = []
        for row, (seq, score) in enumerate(zip(seqs.tolist(), scores.tolist())):
            words = _words(seq)
            results.append(
                DecodingResult(words, score, _attention_rows(attention, row, len(words) + 1))
            )
        return [results[i : i + k] for i in range(0, n, k)]


class SamplingDecoder(GreedyDecoder):
    """Draws `num_samples` captions per image, token by token (temperature, top-k, top-p)."""

    def __init__(self, options: DecodingOptions, filters: list):
        super().__init__(options, filters)
        self.copies = options.num_samples
        self.generator = None
        if options.seed is not None:
            self.generator = torch.Generator().manual_seed(options.seed)

    def choose(self, logprobs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        o = self.options
        logits = logprobs / max(o.temperature, 1e-6)
        if o.top_k > 0:
            kth = logits.topk(min(o.top_k, logits.shape[-1]), dim=-1).values[:, -1:]
            logits = logits.masked_fill(logits < kth, -torch.inf)
        if o.top_p < 1.0:
            sorted_logits, order = logits.sort(dim=-1, descending=True)
            probs = sorted_logits.softmax(dim=-1)
            outside = probs.cumsum(dim=-1) - probs >= o.top_p  # the most probable always stays
            logits = logits.scatter(1, order, sorted_logits.masked_fill(outside, -torch.inf))
        probs = logits.softmax(dim=-1).cpu()
        tokens = torch.multinomial(probs, 1, generator=self.generator).to(logprobs.device)
        return logprobs.gather(1, tokens).squeeze(1), tokens.squeeze(1)


class BeamSearchDecoder:
    """Batched beam search: B images x K beams advance together as one batch of B*K."""

    def __init__(self, options: DecodingOptions, filters: list):
        self.options, self.filters = options, filters
        self.k = options.beam_size

    def rank(self, hyp: DecodingResult) -> float:
        """The score finished hypotheses are ranked by (see `DecodingOptions.length_penalty`)."""
        penalty, length = self.options.length_penalty, len(hyp.tokens) + 1
        if penalty is None:
            return hyp.score
        if penalty == "average":
            return hyp.score / length
        return hyp.score / ((5 + length) / 6) ** float(penalty)

    def decode(self, model, pooled, grid) -> list[list[DecodingResult]]:
        b, k, device = pooled.shape[0], self.k, pooled.device
        state = _expand(model.init_state(pooled, grid), k)
        tokens = torch.full((b * k,), Vocabulary.bos_id, dtype=torch.long, device=device)
        seqs = torch.zeros(b * k, 0, dtype=torch.long, device=device)
        attention = None  # [B*K, t, L] for models that attend
        # All beams of an image start identical: only beam 0 may expand at the first step.
        beam_scores = torch.full((b, k), -torch.inf, device=device)
        beam_scores[:, 0] = 0.0
        finished: list[list[DecodingResult]] = [[] for _ in range(b)]
        for t in range(self.options.max_length + 1):
            last = t == self.options.max_length
            logprobs, state = _step_logprobs(model, tokens, state, self.filters, seqs, last)
            if self.options.attention and "attention" in state:
                step_attention = state["attention"][:, None]  # [B*K, 1, L]
                attention = (
                    step_attention
                    if attention is None
                    else torch.cat([attention, step_attention], dim=1)
                )
            cand = (beam_scores.view(b * k, 1) + logprobs).view(b, -1)  # [B, K*V]
            top_scores, top_idx = cand.topk(min(2 * k, cand.shape[1]), dim=1)  # [B, 2K]
            vocab = logprobs.shape[1]
            src_beam, words = top_idx // vocab, top_idx % vocab
            self._collect_finished(finished, seqs, attention, top_scores, src_beam, words)
            beam_scores, src_beam, words = self._next_beams(top_scores, src_beam, words)
            if self._all_done(finished, beam_scores):
                break
            src = (src_beam + torch.arange(b, device=device)[:, None] * k).view(-1)  # [B*K]
            seqs = torch.cat([seqs[src], words.view(-1, 1)], dim=1)
            attention = None if attention is None else attention[src]
            state = {n: v[src] for n, v in state.items()}
            tokens = words.view(-1)
        n = min(self.options.n_best, k)
        return [sorted(hyps, key=self.rank, reverse=True)[:n] for hyps in finished]

    def _collect_finished(self, finished, seqs, attention, top_scores, src_beam, words) -> None:
        """Candidates among the K best that end with <eos> become finished hypotheses (the best K
        are kept). Ignoring <eos> ranked lower, as fairseq and Hugging Face do, makes a beam of 1
        exactly greedy decoding."""
        ended = (words == Vocabulary.eos_id) & torch.isfinite(top_scores)
        ended[:, self.k :] = False
        for i, j in ended.nonzero().tolist():
            row = i * self.k + int(src_beam[i, j])
            rows = None if attention is None else attention[row].tolist()
            finished[i].append(DecodingResult(seqs[row].tolist(), float(top_scores[i, j]), rows))
        for i in set(ended.nonzero()[:, 0].tolist()):
            finished[i] = sorted(finished[i], key=self.rank, reverse=True)[: self.k]

    def _next_beams(self, top_scores, src_beam, words):
        """The K best candidates that do not end, in score order."""
        rank = torch.arange(top_scores.shape[1], device=top_scores.device).expand_as(top_scores)
        rank = torch.where(words == Vocabulary.eos_id, rank + top_scores.shape[1], rank)
        keep = rank.argsort(dim=1)[:, : self.k]  # [B, K]
        scores = top_scores.gather(1, keep)
        return scores, src_beam.gather(1, keep), words.gather(1, keep)

    def _all_done(self, finished, beam_scores) -> bool:
        """An image is done when K hypotheses ended and no live beam can beat the worst of them:
        total scores only fall as words are added (log-probabilities are <= 0). A length penalty
        can raise a longer hypothesis above a shorter one, so then only dead beams stop early."""
        best_live = beam_scores.max(dim=1).values.tolist()
        if self.options.length_penalty is not None:
            return all(live == -float("inf") for live in best_live)
        return all(
            len(hyps) >= self.k and hyps[-1].score >= live or live == -float("inf")
            for hyps, live in zip(finished, best_live)
        )


def _words(seq: list[int]) -> list[int]:
    out = []
    for token in seq:
        if token in (Vocabulary.eos_id, Vocabulary.pad_id):
            break
        out.append(token)
    return out


@torch.inference_mode()
def decode(model, pooled, grid, options: DecodingOptions | None = None):
    """Decode a batch of images; returns, per image, a list of results (best first for beam
    search; `num_samples` in drawing order for sampling)."""
    options = options or DecodingOptions()
    if options.max_length is None:
        options = dataclasses.replace(options, max_length=DEFAULT_MAX_LENGTH)
    suppressed = [Vocabulary.pad_id, Vocabulary.bos_id]
    if options.forbid_unk:
        suppressed.append(Vocabulary.unk_id)
    filters = [SuppressTokens(suppressed)]
    if options.no_repeat_ngram_size:
        filters.append(NoRepeatNGram(options.no_repeat_ngram_size))
    was_training = model.training
    model.eval()
    try:
        if options.sample:
            strategy = SamplingDecoder
        else:
            strategy = GreedyDecoder if options.beam_size == 1 else BeamSearchDecoder
        return strategy(options, filters).decode(model, pooled, grid)
    finally:
        model.train(was_training)
