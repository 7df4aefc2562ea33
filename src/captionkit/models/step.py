"""The decoding step contract every model (and an ensemble of them) follows:

- `attends: bool`, a class attribute: whether `step` returns attention weights over the grid;
- `init_state(pooled [B, D], grid [B, L, D] | None) -> state`, a dict of batch-first tensors
  (decoding expands and reorders every one of them on dim 0, and export names them);
- `step(tokens [B], state) -> StepOutput(logits [B, V], state, attention [B, L] | None)`;
- optionally `image_state`: the state's names that hold the same tensor for every row of an
  image and that `step` never changes (the grid and its projection, a Transformer's memory keys
  and values): beam search reorders rows only among an image's beams, so it leaves these as
  they are instead of copying them at every step.
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


def image_state_keys(model) -> frozenset[str]:
    """The `image_state` names of a model, or of every member of an ensemble (`models`);
    none for a model that does not say (an exported one: all its state is reordered)."""
    members = getattr(model, "models", None) or [model]
    return frozenset(k for m in members for k in getattr(m, "image_state", ()))
