"""Training on Lightning. Import `captionkit.training.train` for `train()`; this package stays
light so that loading a checkpoint never imports Lightning."""

from captionkit.training.config import (
    DataConfig,
    EncoderConfig,
    OptimConfig,
    RunConfig,
    ScstConfig,
    TrainConfig,
)

__all__ = ["DataConfig", "EncoderConfig", "OptimConfig", "RunConfig", "ScstConfig", "TrainConfig"]
