"""Caption decoders and their registry.

Every model has a config dataclass (stored in checkpoints) and implements:
- `forward(pooled [B, D], grid [B, L, D] | None, tokens [B, T]) -> logits [B, T, V]`
  (teacher forcing);
- `init_state(pooled, grid) -> state` and `step(tokens [B], state) -> (logits [B, V], state)`,
  where `state` is a dict of batch-first tensors, so decoders can expand and reorder it on dim 0;
- `uses_grid`: whether the model reads the spatial grid (else `grid` may be None).
"""

from __future__ import annotations

import dataclasses

from torch import nn

from captionkit.models.attention import AttentionConfig, ShowAttendTell
from captionkit.models.show_tell import ShowTell, ShowTellConfig
from captionkit.models.transformer import TransformerConfig, TransformerDecoder

MODELS: dict[str, tuple[type, type[nn.Module]]] = {
    "show_tell": (ShowTellConfig, ShowTell),
    "attention": (AttentionConfig, ShowAttendTell),
    "transformer": (TransformerConfig, TransformerDecoder),
}


def create_model(name: str, **config) -> nn.Module:
    """Build a registered model from its config fields (unknown fields are an error)."""
    if name not in MODELS:
        raise ValueError(f"unknown model '{name}' (choose from {', '.join(MODELS)})")
    config_cls, model_cls = MODELS[name]
    return model_cls(config_cls(**config))


def model_config_dict(model: nn.Module) -> dict:
    """The model's config as a plain dict, for checkpoints."""
    return dataclasses.asdict(model.config)


__all__ = ["MODELS", "ShowTell", "ShowTellConfig", "create_model", "model_config_dict"]
