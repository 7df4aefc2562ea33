"""Caption decoders and their registry.

Every model has a config dataclass (stored in checkpoints) and implements:
- `forward(pooled [B, D], grid [B, L, D] | None, tokens [B, T]) -> logits [B, T, V]`
  (teacher forcing);
- the decoding step contract of `models.step`: `init_state(pooled, grid) -> state` and
  `step(tokens [B], state) -> StepOutput(logits [B, V], state, attention [B, L] | None)`, where
  `state` is a dict of batch-first tensors, and what the model says about itself (`StepModel`:
  `uses_grid`, `attends`, `shares_images`, `image_state`, `image_rows`).

`model_entry(name)` is the one way from a model's name to its classes: an unknown name is an error
listing the registered ones.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass

from torch import nn

from captionkit.errors import CaptionkitError
from captionkit.models.attention import AttentionConfig, ShowAttendTell
from captionkit.models.show_tell import ShowTell, ShowTellConfig
from captionkit.models.step import ModelConfig, StepModel, StepOutput
from captionkit.models.transformer import TransformerConfig, TransformerDecoder
from captionkit.models.updown import UpDown, UpDownConfig

# Set by training from the data and the encoder, never by the user.
DERIVED_FIELDS = tuple(f.name for f in dataclasses.fields(ModelConfig))


@dataclass(frozen=True)
class ModelEntry:
    """A registered model: its name (as configs and checkpoints give it) and its classes."""

    name: str
    config_class: type
    """The config dataclass, stored in every checkpoint."""
    model_class: type[StepModel]
    """The `nn.Module`, built from a `config_class` instance."""

    def settings(self) -> dict[str, type]:
        """The config fields a user may set (all but `DERIVED_FIELDS`), with their types."""
        hints = typing.get_type_hints(self.config_class)
        fields = dataclasses.fields(self.config_class)
        return {f.name: hints[f.name] for f in fields if f.name not in DERIVED_FIELDS}

    def check_settings(self, settings: dict) -> None:
        """The config class's own checks of user `settings` (the derived fields stood in for),
        as a CaptionkitError naming the model."""
        try:
            self.config_class(**dict.fromkeys(DERIVED_FIELDS, 1), **settings)
        except (TypeError, ValueError) as e:
            raise CaptionkitError(f"model '{self.name}': {e}") from None


MODELS: dict[str, ModelEntry] = {
    entry.name: entry
    for entry in (
        ModelEntry("show_tell", ShowTellConfig, ShowTell),
        ModelEntry("attention", AttentionConfig, ShowAttendTell),
        ModelEntry("transformer", TransformerConfig, TransformerDecoder),
        ModelEntry("updown", UpDownConfig, UpDown),
    )
}


def model_entry(name: str, source: str = "model") -> ModelEntry:
    """The registered model `name`; else an error that lists the registered models, beginning
    with `source`: what named it ("--model", "cfg.yaml: model")."""
    entry = MODELS.get(name) if isinstance(name, str) else None
    if entry is None:
        raise CaptionkitError(f"{source} must be one of {', '.join(MODELS)}, not {name!r}")
    return entry


def create_model(name: str, **config) -> nn.Module:
    """Build a registered model from its config fields (unknown fields are an error)."""
    entry = model_entry(name)
    return entry.model_class(entry.config_class(**config))


def model_config_dict(model: nn.Module) -> dict:
    """The model's config as a plain dict, for checkpoints."""
    return dataclasses.asdict(model.config)


__all__ = [
    "DERIVED_FIELDS",
    "MODELS",
    "ModelConfig",
    "ModelEntry",
    "ShowTell",
    "ShowTellConfig",
    "StepModel",
    "StepOutput",
    "create_model",
    "model_config_dict",
    "model_entry",
]
