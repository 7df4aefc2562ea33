"""Training settings: grouped, typed dataclasses, one docstring per field.

`RunConfig.to_dict()` is written into every run folder (inside `config.json`), and
`RunConfig.from_dict()` reads it back.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from captionkit.encoders.factory import DEFAULT_ENCODER
from captionkit.errors import CaptionkitError


@dataclass
class DataConfig:
    """Where the captions and images are, and how captions become tokens."""

    data: str = ""
    """Dataset folder (format detected) or annotation file."""
    images: str | None = None
    """Image folder, when it is not beside the annotations."""
    tokenizer: str = "word"
    """`word` (PTB words, as the metrics count them) or `bpe` (subword pieces of those words)."""
    min_count: int = 5
    """Word tokenizer: words seen fewer times in the training captions become `<unk>`."""
    vocab_size: int = 2000
    """BPE tokenizer: number of tokens, the four special tokens included."""
    max_length: int = 20
    """Training captions are cut to this many tokens (words, or BPE pieces)."""
    cache_dir: str | None = None
    """Feature cache folder (default `$CAPTIONKIT_CACHE` or `~/.cache/captionkit`)."""
    strict: bool = False
    """Stop at the first bad image or caption instead of skipping it."""


@dataclass
class EncoderConfig:
    """The image encoder whose features the decoder reads."""

    name: str = DEFAULT_ENCODER
    """A timm model name."""
    weights: str = "default"
    """`default` (offline packaged weights), `hub`, `none` or a weights file."""
    finetune: bool = False
    """Train the encoder's last blocks with the decoder, on images decoded and augmented on the
    fly, instead of reading cached features; the run folder then keeps `encoder.safetensors`."""
    finetune_blocks: int = 2
    """Fine-tuning: how many of the last blocks train (see `captionkit.encoders.finetune`)."""
    lr: float = 1e-4
    """Fine-tuning: Adam learning rate of the encoder's weights (the decoder's is `optim.lr`)."""
    crop_scale_min: float = 0.5
    """Fine-tuning: a training image is a random crop of this fraction to all of its area,
    resized to the encoder's input size (validation uses the encoder's own preprocessing)."""
    hflip: float = 0.5
    """Fine-tuning: probability of flipping a training image horizontally."""


@dataclass
class OptimConfig:
    """Optimizer settings."""

    lr: float = 5e-4
    """Adam learning rate."""
    weight_decay: float = 0.0
    """Adam weight decay."""
    grad_clip: float = 5.0
    """Clip the gradient norm to this value (0 disables)."""
    schedule: str = "constant"
    """Learning rate after the warmup: `constant`, or `cosine` (down to 0 at the last step)."""
    warmup_steps: int = 0
    """Steps of linear warmup from 0 to `lr` (0 = none)."""
    label_smoothing: float = 0.0
    """Cross-entropy label smoothing: this much of every target's probability is spread over
    the whole vocabulary (0 = plain cross-entropy)."""

    def __post_init__(self):
        if self.schedule not in ("constant", "cosine"):
            raise CaptionkitError(f"unknown schedule '{self.schedule}' (constant or cosine)")


@dataclass
class TrainConfig:
    """The training loop."""

    epochs: int = 10
    """Passes over the training captions."""
    batch_size: int = 64
    """Captions per training step (when fine-tuning, whole images with all their captions: as
    many images as make about this many captions)."""
    seed: int = 0
    """Seed for weights, data order and dropout."""
    bucket_batches: int = 1
    """Sort pools of this many batches by caption length before batching: less padding, but
    less varied batches (1 = plain shuffled batches, the default; see BENCHMARKS.md)."""
    val_beam_size: int = 1
    """Beam size of the validation decode (1 = greedy)."""
    accelerator: str = "auto"
    """Lightning accelerator: `auto`, `cpu`, `gpu`."""
    workers: int = 2
    """Processes decoding and augmenting images when the encoder is fine-tuned (0 = none)."""
    init: str | None = None
    """A run folder to start from: its decoder weights and tokenizer, and its encoder (fine-tuned
    or not); the model name and settings must be the same."""


@dataclass
class RunConfig:
    """Everything a training run needs."""

    model: str = "show_tell"
    """Registered model name."""
    model_args: dict = field(default_factory=dict)
    """Overrides of the model's config dataclass (e.g. `{"hidden_dim": 256}`)."""
    data: DataConfig = field(default_factory=DataConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> RunConfig:
        groups = {"data": DataConfig, "encoder": EncoderConfig, "optim": OptimConfig}
        groups["train"] = TrainConfig
        kwargs = {k: v for k, v in d.items() if k not in groups}
        kwargs.update({k: groups[k](**d[k]) for k in groups if k in d})
        return cls(**kwargs)
