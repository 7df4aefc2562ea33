"""The decoding step contract every model (and an ensemble of them) follows:

- `attends: bool`, a class attribute: whether `step` returns attention weights over the grid;
- `init_state(pooled [B, D], grid [B, L, D] | None) -> state`, a dict of batch-first tensors
  (decoding expands and reorders every one of them on dim 0, and export names them);
- `step(tokens [B], state) -> StepOutput(logits [B, V], state, attention [B, L] | None)`.
"""

from __future__ import annotations

from typing import NamedTuple

import torch


class StepOutput(NamedTuple):
    """One decoding step of a model: the next token's logits, the new state, and for models
    that attend (`attends = True`) where they looked to predict it."""

    logits: torch.Tensor
    """[B, V] unnormalised scores of the next token."""
    state: dict[str, torch.Tensor]
    """The state after this step: batch-first tensors, to hand to the next `step`."""
    attention: torch.Tensor | None = None
    """[B, L] attention weights over the grid (sum 1), None for models that do not attend."""
