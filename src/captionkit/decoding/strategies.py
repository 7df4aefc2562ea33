"""Strategies for `search.run_search`'s loop: greedy and sampling (beam search: `beam.py`).

Each chooses the next token of every row from the step's log-probabilities (`update`), says when
it is done, and turns the rows into results (`finalize`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from captionkit.data.vocab import Vocabulary
from captionkit.decoding.options import DecodingOptions, DecodingResult


@dataclass
class SearchStep:
    """What a strategy sees at step t (N = images x rows per image)."""

    logprobs: torch.Tensor
    """[N, V] filtered log-probabilities of the next token."""
    seqs: torch.Tensor
    """[N, t] the tokens chosen so far."""
    attention: torch.Tensor | None
    """[N, t + 1, L] attention of every step so far, this one included (when collected)."""


class Strategy(Protocol):
    """Chooses tokens: greedy, sampling, beam search (`beam.BeamSearch`)."""

    def start(self, batch: int, device: torch.device) -> int:
        """Prepare for `batch` images; returns the rows each image decodes with."""
        ...

    def update(self, step: SearchStep) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Next tokens [N'], and the row [N'] each row continues (None: itself), always one of
        the same image's rows (the model's `image_state` is not reordered); N' < N when images
        have finished and their rows leave the batch (then every tensor is gathered, by rows or, for
        state a model keeps once per image, by image)."""
        ...

    @property
    def done(self) -> bool: ...

    def finalize(self, seqs: torch.Tensor, attention: torch.Tensor | None):
        """Per image, its results; seqs [N, t] hold every token chosen, the last step's too."""
        ...


class Greedy:
    """The most probable next token at every step, for all images at once."""

    copies = 1  # rows per image

    def __init__(self, options: DecodingOptions):
        self.options = options

    def start(self, batch: int, device: torch.device) -> int:
        n = batch * self.copies
        self.scores = torch.zeros(n, device=device)
        self.finished = torch.zeros(n, dtype=torch.bool, device=device)
        return self.copies

    def choose(self, logprobs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(log-probability, token) of the next token of every row."""
        return logprobs.max(dim=-1)

    def update(self, step: SearchStep) -> tuple[torch.Tensor, None]:
        best, tokens = self.choose(step.logprobs)
        self.scores += torch.where(self.finished, 0.0, best)
        tokens = torch.where(self.finished, Vocabulary.pad_id, tokens)
        self.finished |= tokens == Vocabulary.eos_id
        return tokens, None

    @property
    def done(self) -> bool:
        return bool(self.finished.all())

    def finalize(self, seqs, attention) -> list[list[DecodingResult]]:
        results = []
        for row, (seq, score) in enumerate(zip(seqs.tolist(), self.scores.tolist())):
            words = _words(seq)
            rows = None if attention is None else attention[row, : len(words) + 1].tolist()
            results.append(DecodingResult(words, score, rows))
        k = self.copies
        return [results[i : i + k] for i in range(0, len(results), k)]


class Sampling(Greedy):
    """Draws `num_samples` captions per image, token by token (temperature, top-k, top-p)."""

    def __init__(self, options: DecodingOptions):
        super().__init__(options)
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


def _words(seq: list[int]) -> list[int]:
    out = []
    for token in seq:
        if token in (Vocabulary.eos_id, Vocabulary.pad_id):
            break
        out.append(token)
    return out
