"""Turning a model's step function into captions: batched greedy and beam search.

Every strategy decodes a batch of images at once and returns, per image, the best hypotheses as
`DecodingResult`s. A hypothesis is a word sequence w1..wn (n <= max_length) followed by `<eos>`;
its score is the sum of log-probabilities of all its tokens, `<eos>` included. At step max_length
only `<eos>` is allowed, so every hypothesis ends, and the brute-force reference in the tests can
enumerate exactly the same set.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from captionkit.data.vocab import Vocabulary


@dataclass
class DecodingOptions:
    """How to decode; `beam_size=1` is greedy."""

    beam_size: int = 1
    """Hypotheses kept per image; 1 means greedy decoding."""
    max_length: int = 20
    """Most words in a caption, `<eos>` not counted."""
    n_best: int = 1
    """Hypotheses returned per image (at most `beam_size`)."""
    forbid_unk: bool = False
    """Never generate `<unk>`."""


@dataclass
class DecodingResult:
    """One hypothesis: word ids without `<bos>`/`<eos>`, and its total log-probability."""

    tokens: list[int]
    score: float


class SuppressTokens:
    """Logit filter: tokens that must never be generated get -inf."""

    def __init__(self, token_ids: list[int]):
        self.token_ids = token_ids

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        logits[..., self.token_ids] = -torch.inf
        return logits


def _step_logprobs(model, tokens, state, filters, last: bool):
    """Log-probabilities [N, V] of the next token after filtering, and the new state."""
    logits, state = model.step(tokens, state)
    logits = logits.float()
    for f in filters:
        logits = f.apply(logits)
    logprobs = F.log_softmax(logits, dim=-1)
    if last:  # the length limit: every hypothesis ends here, with <eos>'s real probability
        eos = logprobs[:, Vocabulary.eos_id].clone()
        logprobs.fill_(-torch.inf)
        logprobs[:, Vocabulary.eos_id] = eos
    return logprobs, state


class GreedyDecoder:
    """The most probable next word at every step, for all images at once."""

    def __init__(self, options: DecodingOptions, filters: list):
        self.options, self.filters = options, filters

    def decode(self, model, pooled, grid) -> list[list[DecodingResult]]:
        state = model.init_state(pooled, grid)
        batch = pooled.shape[0]
        tokens = torch.full((batch,), Vocabulary.bos_id, dtype=torch.long, device=pooled.device)
        scores = torch.zeros(batch, device=pooled.device)
        finished = torch.zeros(batch, dtype=torch.bool, device=pooled.device)
        steps = []
        for t in range(self.options.max_length + 1):
            logprobs, state = _step_logprobs(
                model, tokens, state, self.filters, t == self.options.max_length
            )
            best, tokens = logprobs.max(dim=-1)
            scores += torch.where(finished, 0.0, best)
            tokens = torch.where(finished, Vocabulary.pad_id, tokens)
            steps.append(tokens)
            finished |= tokens == Vocabulary.eos_id
            if finished.all():
                break
        seqs = torch.stack(steps, dim=1).tolist()
        return [[DecodingResult(_words(s), float(v))] for s, v in zip(seqs, scores.tolist())]


class BeamSearchDecoder:
    """Batched beam search: B images x K beams advance together as one batch of B*K."""

    def __init__(self, options: DecodingOptions, filters: list):
        self.options, self.filters = options, filters
        self.k = options.beam_size

    def decode(self, model, pooled, grid) -> list[list[DecodingResult]]:
        b, k, device = pooled.shape[0], self.k, pooled.device
        state = {
            n: v.repeat_interleave(k, dim=0) for n, v in model.init_state(pooled, grid).items()
        }
        tokens = torch.full((b * k,), Vocabulary.bos_id, dtype=torch.long, device=device)
        seqs = torch.zeros(b * k, 0, dtype=torch.long, device=device)
        # All beams of an image start identical: only beam 0 may expand at the first step.
        beam_scores = torch.full((b, k), -torch.inf, device=device)
        beam_scores[:, 0] = 0.0
        finished: list[list[DecodingResult]] = [[] for _ in range(b)]
        for t in range(self.options.max_length + 1):
            logprobs, state = _step_logprobs(
                model, tokens, state, self.filters, t == self.options.max_length
            )
            cand = (beam_scores.view(b * k, 1) + logprobs).view(b, -1)  # [B, K*V]
            top_scores, top_idx = cand.topk(min(2 * k, cand.shape[1]), dim=1)  # [B, 2K]
            vocab = logprobs.shape[1]
            src_beam, words = top_idx // vocab, top_idx % vocab
            self._collect_finished(finished, seqs, top_scores, src_beam, words)
            beam_scores, src_beam, words = self._next_beams(top_scores, src_beam, words)
            if self._all_done(finished, beam_scores):
                break
            src = (src_beam + torch.arange(b, device=device)[:, None] * k).view(-1)  # [B*K]
            seqs = torch.cat([seqs[src], words.view(-1, 1)], dim=1)
            state = {n: v[src] for n, v in state.items()}
            tokens = words.view(-1)
        n = min(self.options.n_best, k)
        return [sorted(hyps, key=lambda h: -h.score)[:n] for hyps in finished]

    def _collect_finished(self, finished, seqs, top_scores, src_beam, words) -> None:
        """Candidates among the K best that end with <eos> become finished hypotheses (the best K
        are kept). Ignoring <eos> ranked lower, as fairseq and Hugging Face do, makes a beam of 1
        exactly greedy decoding."""
        ended = (words == Vocabulary.eos_id) & torch.isfinite(top_scores)
        ended[:, self.k :] = False
        for i, j in ended.nonzero().tolist():
            row = i * self.k + int(src_beam[i, j])
            finished[i].append(DecodingResult(seqs[row].tolist(), float(top_scores[i, j])))
        for i in set(ended.nonzero()[:, 0].tolist()):
            finished[i] = sorted(finished[i], key=lambda h: -h.score)[: self.k]

    def _next_beams(self, top_scores, src_beam, words):
        """The K best candidates that do not end, in score order."""
        rank = torch.arange(top_scores.shape[1], device=top_scores.device).expand_as(top_scores)
        rank = torch.where(words == Vocabulary.eos_id, rank + top_scores.shape[1], rank)
        keep = rank.argsort(dim=1)[:, : self.k]  # [B, K]
        scores = top_scores.gather(1, keep)
        return scores, src_beam.gather(1, keep), words.gather(1, keep)

    def _all_done(self, finished, beam_scores) -> bool:
        """An image is done when K hypotheses ended and no live beam can beat the worst of them:
        scores only fall as words are added (log-probabilities are <= 0)."""
        best_live = beam_scores.max(dim=1).values.tolist()
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
    """Decode a batch of images; returns, per image, up to `n_best` results, best first."""
    options = options or DecodingOptions()
    suppressed = [Vocabulary.pad_id, Vocabulary.bos_id]
    if options.forbid_unk:
        suppressed.append(Vocabulary.unk_id)
    filters = [SuppressTokens(suppressed)]
    was_training = model.training
    model.eval()
    try:
        strategy = GreedyDecoder if options.beam_size == 1 else BeamSearchDecoder
        return strategy(options, filters).decode(model, pooled, grid)
    finally:
        model.train(was_training)
