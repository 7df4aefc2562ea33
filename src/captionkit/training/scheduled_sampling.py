"""Scheduled sampling (Bengio et al. 2015), the parallel two-pass way (Mihaylova & Martins 2019).

Teacher forcing only ever shows the decoder true words, while at inference it reads its own.
Here a first pass, teacher-forced and without gradients, gives the model's prediction at each
position; each caption word the decoder reads is then replaced, with probability p, by a token
drawn from the prediction for that position, and the training pass reads that mixed caption
(the loss still wants the true next words). One extra forward pass, batched, for any model
that takes a whole caption, instead of decoding step by step.
"""

from __future__ import annotations

import torch
from torch import nn

from captionkit.data.vocab import Vocabulary
from captionkit.training.config import OptimConfig

# Never drawn: at inference no caption the decoder reads has them after its <bos>.
SUPPRESSED = (Vocabulary.pad_id, Vocabulary.bos_id, Vocabulary.eos_id)


def ss_probability(optim: OptimConfig, epoch: int) -> float:
    """The replacement probability of epoch `epoch` (from 0): 0 before `ss_start_epoch`, then
    rising linearly over `ss_ramp_epochs` epochs to `scheduled_sampling`."""
    if optim.scheduled_sampling == 0 or epoch < optim.ss_start_epoch:
        return 0.0
    if optim.ss_ramp_epochs == 0:
        return optim.scheduled_sampling
    ramp = min(1.0, (epoch - optim.ss_start_epoch + 1) / optim.ss_ramp_epochs)
    return optim.scheduled_sampling * ramp


def draw_model_tokens(logits: torch.Tensor, generator: torch.Generator | None = None):
    """logits [B, T, V] -> one token [B, T] drawn from each position's distribution (in float32,
    special tokens suppressed)."""
    logits = logits.detach().float()
    logits[..., list(SUPPRESSED)] = float("-inf")
    probs = logits.softmax(-1).reshape(-1, logits.shape[-1])  # [B*T, V]
    return torch.multinomial(probs, 1, generator=generator).view(logits.shape[:-1])


def mix_inputs(
    inputs: torch.Tensor, drawn: torch.Tensor, p: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """inputs [B, T] (<bos> w1 .. wn <eos> <pad>..), drawn [B, T] (drawn[:, t]: the model's
    token for inputs[:, t + 1]) -> inputs [B, T] with each word replaced by the model's token
    with probability `p`. <bos>, <eos> and padding stay: they are not read as words (the <eos>
    read predicts padding, which the loss ignores, and the attention regulariser skips)."""
    guesses = torch.cat([inputs[:, :1], drawn[:, :-1]], dim=1)  # [B, T], aligned with inputs
    words = (inputs != Vocabulary.pad_id) & (inputs != Vocabulary.eos_id)  # [B, T]
    words[:, 0] = False  # <bos>
    draws = torch.rand(inputs.shape, generator=generator, device=inputs.device)  # [B, T]
    return torch.where(words & (draws < p), guesses, inputs)


def scheduled_sampling_inputs(
    model: nn.Module,
    pooled: torch.Tensor,
    grid: torch.Tensor | None,
    inputs: torch.Tensor,
    p: float,
) -> torch.Tensor:
    """The caption [B, T] the training pass reads: `inputs` (teacher forcing) mixed with the
    model's tokens with probability `p` (p = 0: `inputs` itself, with no extra pass)."""
    if p == 0:
        return inputs
    # The model stays in training mode (dropout on), as it is in the pass that learns.
    with torch.no_grad():
        logits = model(pooled, grid, inputs)  # [B, T, V]
    return mix_inputs(inputs, draw_model_tokens(logits), p)
