"""Caption decoders and their registry.

Every model has a config dataclass (stored in checkpoints) and implements:
- `forward(pooled [B, D], grid [B, L, D] | None, tokens [B, T]) -> logits [B, T, V]`
  (teacher forcing);
- `init_state(pooled, grid) -> state` and `step(tokens [B], state) -> StepOutput(logits [B, V],
  state, attention [B, L] | None)`, where `state` is a dict of batch-first tensors, so decoders
  can expand and reorder it on dim 0 (`models.step`);
- `uses_grid`: whether the model reads the spatial grid (else `grid` may be None);
- `attends`: whether `step` returns attention weights over the grid.
"""

from __future__ import annotations

import dataclasses
import typing

from torch import nn

from captionkit.errors import CaptionkitError
from captionkit.models.attention import AttentionConfig, ShowAttendTell
from captionkit.models.show_tell import ShowTell, ShowTellConfig
from captionkit.models.step import StepOutput
from captionkit.models.transformer import TransformerConfig, TransformerDecoder
from captionkit.models.updown import UpDown, UpDownConfig

MODELS: dict[str, tuple[type, type[nn.Module]]] = {
    "show_tell": (ShowTellConfig, ShowTell),
    "attention": (AttentionConfig, ShowAttendTell),
    "transformer": (TransformerConfig, TransformerDecoder),
    "updown": (UpDownConfig, UpDown),
}

# Set by training from the data and the encoder, never by the user.
DERIVED_FIELDS = ("vocab_size", "feature_dim")


def model_settings(name: str) -> dict[str, type]:
    """The config fields a user may set for a registered model (all but `DERIVED_FIELDS`), with
    their types."""
    if name not in MODELS:
        raise CaptionkitError(f"unknown model {name!r} (choose from {', '.join(MODELS)})")
    config_cls = MODELS[name][0]
    hints = typing.get_type_hints(config_cls)
    fields = dataclasses.fields(config_cls)
    return {f.name: hints[f.name] for f in fields if f.name not in DERIVED_FIELDS}


def create_model(name: str, **config) -> nn.Module:
    """Build a registered model from its config fields (unknown fields are an error)."""
    if name not in MODELS:
        raise ValueError(f"unknown model '{name}' (choose from {', '.join(MODELS)})")
    config_cls, model_cls = MODELS[name]
    return model_cls(config_cls(**config))


def model_config_dict(model: nn.Module) -> dict:
    """The model's config as a plain dict, for checkpoints."""
    return dataclasses.asdict(model.config)


__all__ = [
    "DERIVED_FIELDS",
    "MODELS",
    "ShowTell",
    "ShowTellConfig",
    "StepOutput",
    "create_model",
    "model_config_dict",
    "model_settings",
]
