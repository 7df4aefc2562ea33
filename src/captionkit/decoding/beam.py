"""Batched beam search, plain or diverse, as a strategy of `search.run_search`'s loop.

B images x K beams advance together as one batch of B*K rows. Diverse beam search (Vijayakumar
et al. 2018, as in ruotianluo/ImageCaptioning.pytorch and Hugging Face `generate`) splits an
image's K beams into G groups of K/G; the groups choose in turn at each step, and a group's
log-probabilities lose λ for every earlier group's beam that chose the same token at this step
(Hamming diversity). A group ranks its beams and its finished hypotheses by these penalised
scores; the results keep the model's own log-probability as `score` and the n-best list ranks
every group's hypotheses by it. With one group nothing is penalised: plain beam search.
"""

from __future__ import annotations

import torch

from captionkit.data.vocab import Vocabulary
from captionkit.decoding.options import DecodingOptions, DecodingResult
from captionkit.decoding.strategies import SearchStep


class BeamSearch:
    """K beams per image in G groups (`beam_groups`); see the module docstring."""

    def __init__(self, options: DecodingOptions):
        self.options = options
        self.k, self.groups = options.beam_size, options.beam_groups
        self.size = self.k // self.groups  # beams per group
        # Finished hypotheses kept per group: the beams', or more (`DecodingOptions.finished`).
        self.keep = max(self.size, -(-(options.finished or 0) // self.groups))
        self.diversity = options.diversity or 0.0

    def start(self, batch: int, device: torch.device) -> int:
        # All beams of a group start identical: only the first may expand at the first step.
        self.search = torch.full((batch, self.groups, self.size), -torch.inf, device=device)
        self.search[:, :, 0] = 0.0  # [B, G, S]: penalised totals, what a group ranks by
        self.true = self.search.clone()  # [B, G, S]: the model's log-probabilities
        # Per image and group: the finished hypotheses, as (penalised total, result).
        self.finished = [[[] for _ in range(self.groups)] for _ in range(batch)]
        self.alive = list(range(batch))  # the images still searching, in the order of their rows
        self._done = False
        return self.k

    def rank(self, score: float, hyp: DecodingResult) -> float:
        """The score finished hypotheses are ranked by (see `DecodingOptions.length_penalty`)."""
        penalty, length = self.options.length_penalty, len(hyp.tokens) + 1
        if penalty is None:
            return score
        if penalty == "average":
            return score / length
        return score / ((5 + length) / 6) ** float(penalty)

    def update(self, step: SearchStep) -> tuple[torch.Tensor, torch.Tensor]:
        b, vocab = self.search.shape[0], step.logprobs.shape[1]
        logprobs = step.logprobs.view(b, self.groups, self.size, vocab)
        chosen = None  # [B, V]: how many beams of earlier groups chose each token at this step
        sources, tokens = [], []
        for g in range(self.groups):
            lp = logprobs[:, g]  # [B, S, V]
            penalised = lp if chosen is None else lp - self.diversity * chosen[:, None]
            cand = (self.search[:, g, :, None] + penalised).view(b, -1)  # [B, S*V]
            top, idx = cand.topk(min(2 * self.size, cand.shape[1]), dim=1)  # [B, 2S]
            true = (self.true[:, g, :, None] + lp).view(b, -1).gather(1, idx)
            words = idx % vocab
            first_row = torch.arange(b, device=idx.device)[:, None] * self.k + g * self.size
            rows = first_row + idx // vocab  # [B, 2S]: the row each candidate continues
            self._collect(g, step, top, true, rows, words)
            keep = _continuing(words, self.size)  # [B, S]
            self.search[:, g], self.true[:, g] = top.gather(1, keep), true.gather(1, keep)
            sources.append(rows.gather(1, keep))
            tokens.append(words.gather(1, keep))
            if g + 1 < self.groups:
                live = torch.isfinite(self.search[:, g]).float()  # [B, S]
                chosen = torch.zeros(b, vocab, device=lp.device) if chosen is None else chosen
                chosen.scatter_add_(1, tokens[-1], live)
        tokens, sources = torch.stack(tokens, dim=1), torch.stack(sources, dim=1)  # [B, K] each
        running = self._running()
        self._done = not running.any()
        if self._done or running.all():
            return tokens.view(-1), sources.view(-1)
        # Finished images leave the batch: no more steps over their rows.
        keep = running.nonzero().squeeze(1)
        self.search, self.true = self.search[keep], self.true[keep]
        self.alive = [self.alive[i] for i in keep.tolist()]
        return tokens[keep].view(-1), sources[keep].view(-1)

    def _collect(self, g: int, step: SearchStep, top, true, rows, words) -> None:
        """Candidates among the group's S best that end with <eos> become finished hypotheses
        (the best `keep` are kept). Ignoring <eos> ranked lower, as fairseq and Hugging Face do,
        makes a beam of 1 exactly greedy decoding."""
        ended = (words == Vocabulary.eos_id) & torch.isfinite(top)
        ended[:, self.size :] = False
        hits = ended.nonzero().tolist()
        for i, j in hits:
            row = int(rows[i, j])
            attention = None if step.attention is None else step.attention[row].tolist()
            result = DecodingResult(step.seqs[row].tolist(), float(true[i, j]), attention)
            self.finished[self.alive[i]][g].append((float(top[i, j]), result))
        for i in {self.alive[i] for i, _ in hits}:
            ranked = sorted(self.finished[i][g], key=lambda e: self.rank(*e), reverse=True)
            self.finished[i][g] = ranked[: self.keep]

    def _running(self) -> torch.Tensor:
        """[B] whether each image's search goes on. A group is done when `keep` hypotheses ended
        and none of its live beams can beat the worst of them: totals only fall as words are
        added (log-probabilities are <= 0, penalties >= 0), so later hypotheses could not enter
        its `keep` best. A length penalty can raise a longer hypothesis above a shorter one, so
        then only dead beams stop early."""
        best_live = self.search.max(dim=2).values.tolist()  # [B][G]
        dead = -float("inf")
        if self.options.length_penalty is not None:
            running = [any(live != dead for live in lives) for lives in best_live]
        else:
            running = [
                not all(live == dead or len(hyps) >= self.keep and hyps[-1][0] >= live
                        for hyps, live in zip(self.finished[image], lives))
                for image, lives in zip(self.alive, best_live)
            ]  # fmt: skip
        return torch.tensor(running, dtype=torch.bool, device=self.search.device)

    @property
    def done(self) -> bool:
        return self._done

    def finalize(self, seqs, attention) -> list[list[DecodingResult]]:
        """Each image's `n_best` hypotheses of all groups, ranked by their log-probability."""
        out = []
        for groups in self.finished:
            hyps = [hyp for group in groups for _, hyp in group]
            out.append(sorted(hyps, key=lambda h: self.rank(h.score, h), reverse=True))
        return [hyps[: self.options.n_best] for hyps in out]


def _continuing(words: torch.Tensor, size: int) -> torch.Tensor:
    """Indices [B, S] of the S best candidates of words [B, 2S] that do not end, best first."""
    rank = torch.arange(words.shape[1], device=words.device).expand_as(words)
    rank = torch.where(words == Vocabulary.eos_id, rank + words.shape[1], rank)
    return rank.argsort(dim=1)[:, :size]
