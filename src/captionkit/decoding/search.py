"""One decoding loop for every strategy, as Whisper's `DecodingTask` with its `TokenDecoder`s.

The loop steps the model (`models.step`'s contract), turns the logits into filtered
log-probabilities and hands them to the strategy, whose `update` chooses each row's next token
and says which row each continues (beam search reorders); the loop keeps the tokens, the
attention and the model state in that order, and `finalize` returns the results.

A hypothesis is a word sequence w1..wn (n <= max_length) followed by `<eos>`; its score is the
sum of the model's log-probabilities of all its tokens, `<eos>` included (after the logit
filters, before any sampling temperature). At step max_length only `<eos>` is allowed, so every
hypothesis ends, and the brute-force reference in the tests can enumerate the same set.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from captionkit.data.vocab import Vocabulary
from captionkit.decoding.beam import BeamSearch
from captionkit.decoding.filters import logit_filters
from captionkit.decoding.options import DEFAULT_MAX_LENGTH, DecodingOptions
from captionkit.decoding.strategies import Greedy, Sampling, SearchStep, Strategy
from captionkit.models.step import image_state_keys


def map_state(state, fn, keep: frozenset[str] = frozenset(), keep_fn=None):
    """`fn` applied to every tensor of a state (a dict of tensors, or an ensemble's list of
    them), keeping its structure; the tensors named in `keep` get `keep_fn` instead (None: left
    as they are)."""
    if isinstance(state, dict):
        return {
            name: (value if keep_fn is None else keep_fn(value))
            if name in keep
            else map_state(value, fn, keep, keep_fn)
            for name, value in state.items()
        }
    if isinstance(state, (list, tuple)):
        return type(state)(map_state(value, fn, keep, keep_fn) for value in state)
    return fn(state)


def _first_tensor(state) -> torch.Tensor:
    if isinstance(state, dict):
        state = list(state.values())
    if isinstance(state, (list, tuple)):
        return _first_tensor(state[0])
    return state


def _rows(source: torch.Tensor):
    return lambda v: v[source]


def _reordered(state, source, copies: int, rows: int, per_image, once):
    """The state of the rows `source` [N'] (of `rows` before, `copies` per image). The per-image
    state stays as it is unless images left the batch (N' < rows): then per-row copies are
    indexed as rows, and state kept once per image by the images left."""
    if len(source) == rows:
        return map_state(state, _rows(source), per_image)
    images = source[::copies] // copies  # [N' / copies] the images still searching
    return map_state(state, _rows(source), once, _rows(images))


def _logprobs(logits: torch.Tensor, filters: list, seqs: torch.Tensor, last: bool):
    """Log-probabilities [N, V] of the next token after filtering."""
    logits = logits.float()
    for f in filters:
        logits = f.apply(logits, seqs)
    logprobs = F.log_softmax(logits, dim=-1)
    if last:  # the length limit: every hypothesis ends here, with <eos>'s real probability
        eos = logprobs[:, Vocabulary.eos_id].clone()
        logprobs.fill_(-torch.inf)
        logprobs[:, Vocabulary.eos_id] = eos
    return logprobs


def run_search(model, pooled, grid, options: DecodingOptions, filters: list, strategy: Strategy):
    """The loop every strategy shares; returns `strategy.finalize`'s results."""
    state = model.init_state(pooled, grid)
    first = _first_tensor(state)
    copies = strategy.start(first.shape[0], first.device)
    per_image = image_state_keys(model)  # the same in all of an image's rows: never reordered
    once = per_image if model.image_rows else frozenset()  # and kept one row per image
    state = map_state(state, lambda v: v.repeat_interleave(copies, dim=0), once)
    n = first.shape[0] * copies
    tokens = torch.full((n,), Vocabulary.bos_id, dtype=torch.long, device=first.device)
    seqs = torch.zeros(n, 0, dtype=torch.long, device=first.device)
    attention = None  # [N, t, L] when asked for, for models that attend
    for t in range(options.max_length + 1):
        out = model.step(tokens, state)
        logprobs = _logprobs(out.logits, filters, seqs, last=t == options.max_length)
        if options.attention and out.attention is not None:
            now = out.attention[:, None].float()  # [N, 1, L]
            attention = now if attention is None else torch.cat([attention, now], dim=1)
        tokens, source = strategy.update(SearchStep(logprobs, seqs, attention))
        if source is not None:
            seqs = seqs[source]
            attention = None if attention is None else attention[source]
        seqs = torch.cat([seqs, tokens[:, None]], dim=1)
        if strategy.done:
            break
        state = (
            out.state
            if source is None
            else _reordered(out.state, source, copies, len(logprobs), per_image, once)
        )
    return strategy.finalize(seqs, attention)


@torch.inference_mode()
def decode(model, pooled, grid, options: DecodingOptions | None = None, tokenizer=None):
    """Decode a batch of images; returns, per image, a list of results (best first for beam
    search; `num_samples` in drawing order for sampling). `tokenizer` is needed by
    `options.bad_endings` only. `model` follows `captionkit.models.step`'s contract (a model,
    an exported one, or a `decoding.Ensemble`, whose `pooled`/`grid` are lists, one per member)."""
    options = options or DecodingOptions()
    if options.max_length is None:
        options = dataclasses.replace(options, max_length=DEFAULT_MAX_LENGTH)
    filters = logit_filters(options, tokenizer)
    if options.sample:
        strategy = Sampling(options)
    else:
        strategy = Greedy(options) if options.beam_size == 1 else BeamSearch(options)
    was_training = model.training
    model.eval()
    try:
        return run_search(model, pooled, grid, options, filters, strategy)
    finally:
        model.train(was_training)
