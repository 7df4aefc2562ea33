"""The decoding step contract every model (and an ensemble of them, or an exported one) follows:

- `init_state(pooled [B, D], grid [B, L, D] | None) -> state`, a dict of batch-first tensors
  (decoding expands and reorders them on dim 0, but for `image_state` and `image_rows`, and
  export names them);
- `step(tokens [B], state) -> StepOutput(logits [B, V], state, attention [B, L] | None)`;
- what it says about itself, the attributes of `StepModel`, which declares each with its default.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch


@dataclass
class ModelConfig:
    """The fields every model's config dataclass starts with: sizes that training derives from
    the data and the encoder, never the user's to set (`models.DERIVED_FIELDS`)."""

    vocab_size: int
    """Number of tokens, specials included."""
    feature_dim: int
    """Size D of the encoder's pooled feature and of each grid position's."""


class StepModel:
    """The attributes a model under this contract declares about itself, with their defaults; a
    model sets those that differ (as class attributes, or in `__init__` when they depend on its
    config or members). Every decoder, ensemble and exported model derives from it, so callers
    read the attributes plainly."""

    uses_grid: bool = False
    """Whether the model reads the spatial grid (else `grid` may be None)."""
    attends: bool = False
    """Whether `step` returns attention weights over the grid."""
    shares_images: bool = False
    """Whether teacher-forced `forward` takes features per image and `image_index` [B] (batches
    grouped by image), so that an image's work is done once for all its captions."""
    selects_steps: bool = False
    """Whether teacher-forced `forward` takes `steps` [B, T] (bool) and returns the logits of
    just those steps, [n, V] (training leaves out the padding)."""
    image_state: tuple[str, ...] = ()
    """The state's names that hold the same tensor for every row of an image and that `step`
    never changes (the grid and its projection, a Transformer's memory keys and values): beam
    search reorders rows only among an image's beams, so it leaves these as they are instead of
    copying them at every step."""
    image_rows: bool = False
    """Whether `step` also takes its `image_state` with one row per image while the rest of the
    state has a block of consecutive rows per image (an image's beams or samples): decoding then
    never copies them per row, and the attention over an image's grid serves all its rows as one
    matrix product."""


class StepOutput(NamedTuple):
    """One decoding step of a model: the next token's logits, the new state, and for models
    that attend (`attends = True`) where they looked to predict it."""

    logits: torch.Tensor
    """[B, V] unnormalised scores of the next token."""
    state: dict[str, torch.Tensor]
    """The state after this step: batch-first tensors, to hand to the next `step`."""
    attention: torch.Tensor | None = None
    """[B, L] attention weights over the grid (sum 1), None for models that do not attend."""


def image_state_keys(model: StepModel) -> frozenset[str]:
    """The names of `model`'s state that beam search never reorders (`StepModel.image_state`)."""
    return frozenset(model.image_state)
