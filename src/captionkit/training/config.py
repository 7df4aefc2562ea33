"""Training settings: grouped, typed dataclasses, one docstring per field.

`RunConfig.to_dict()` is written into every run folder (inside `config.json`), and
`RunConfig.from_dict()` reads it back. `RunConfig.from_yaml()` reads a config file (see `configs/`),
checking every key and value against these dataclasses, and `to_yaml()` writes one: training
leaves the resolved config in the run folder as `config.yaml`.
"""

from __future__ import annotations

import dataclasses
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from captionkit.data.tokenizers import TOKENIZER_KINDS
from captionkit.encoders.factory import DEFAULT_ENCODER, DEFAULT_RESIZE, RESIZES
from captionkit.errors import CaptionkitError
from captionkit.training.config_fields import check_model_args, check_value, known_keys

PRECISIONS = ("32", "bf16-mixed", "16-mixed")
STRATEGIES = ("auto", "ddp")


def _check_choice(name: str, value, choices: tuple) -> None:
    if value not in choices:
        raise CaptionkitError(f"unknown {name} '{value}' ({' or '.join(map(str, choices))})")


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

    def __post_init__(self):
        _check_choice("tokenizer", self.tokenizer, TOKENIZER_KINDS)
        for name, low in (("min_count", 1), ("vocab_size", 8), ("max_length", 1)):
            _check_range(name, getattr(self, name), low, None)


@dataclass
class EncoderConfig:
    """The image encoder whose features the decoder reads."""

    name: str = DEFAULT_ENCODER
    """A timm model name."""
    weights: str = "default"
    """`default` (offline packaged weights), `hub`, `none` or a weights file."""
    resize: str = DEFAULT_RESIZE
    """`squash`: the whole photo resized to the encoder's square input; `crop`: timm's centre
    crop (a 4:3 photo loses a third of its width). Evaluation and serving use the run's."""
    finetune: bool = False
    """Train the encoder's last blocks with the decoder, on images decoded and augmented on the
    fly, instead of reading cached features; the run folder then keeps `encoder.safetensors`."""
    finetune_blocks: int = 2
    """Fine-tuning: how many of the last blocks train (see `captionkit.encoders.finetune`)."""
    lr: float = 1e-4
    """Fine-tuning: Adam learning rate of the encoder's weights (the decoder's is `optim.lr`)."""
    feature_views: int = 0
    """Without fine-tuning: also cache the features of this many augmented views of each
    training image (a random crop and flip as below, the same every time), and each epoch train
    every image on one of its views or on itself, drawn at random (0 = the image itself only)."""
    crop_scale_min: float = 0.5
    """Fine-tuning and feature views: a training image is a random crop of this fraction to all
    of its area, resized to the encoder's input size (validation uses the encoder's own
    preprocessing)."""
    hflip: float = 0.5
    """Fine-tuning and feature views: probability of flipping a training image horizontally."""

    def __post_init__(self):
        _check_choice("resize", self.resize, RESIZES)
        _check_range("feature_views", self.feature_views, 0, None)
        _check_range("crop_scale_min", self.crop_scale_min, 0, 1, low_open=True)
        _check_range("hflip", self.hflip, 0, 1)


OPTIMIZERS = ("adam", "adamw")
SCHEDULES = ("constant", "cosine", "step", "plateau", "noam")
OBJECTIVES = ("xe", "scst")
CAPTION_WEIGHTS = ("uniform", "consensus")
# SCST fine-tunes a converged model on a noisy reward: a tenth of the XE rate keeps it from
# undoing the XE training in its first steps (Rennie et al. and self-critical.pytorch use 5e-5).
DEFAULT_LR = {"xe": 5e-4, "scst": 5e-5}


def _check_range(name: str, value, low, high, low_open: bool = False, high_open: bool = False):
    """Refuse `value` outside [low, high] (an end left open with `*_open`; None = unbounded)."""
    below = low is not None and (value <= low if low_open else value < low)
    above = high is not None and (value >= high if high_open else value > high)
    if below or above:
        if high is None:
            bounds = f"{'>' if low_open else '>='} {low}"
        else:
            bounds = f"in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        raise CaptionkitError(f"{name} must be {bounds}, not {value}")


@dataclass
class OptimConfig:
    """Optimizer, learning-rate schedule and scheduled sampling settings."""

    objective: str = "xe"
    """`xe` (teacher-forced cross-entropy) or `scst` (self-critical sequence training: sampled
    captions rewarded by their CIDEr-D, see `ScstConfig`; fine-tunes an `--init` run)."""
    optimizer: str = "adam"
    """`adam` (weight decay added to the gradient, L2) or `adamw` (weight decay applied to the
    weights apart from the Adam update: decoupled, Loshchilov & Hutter)."""
    lr: float | None = None
    """Learning rate (the peak one, when there is a warmup). None (left out): the objective's
    default, 5e-4 for `xe`, 5e-5 for `scst`; the config keeps the number it resolved to."""
    weight_decay: float = 0.0
    """Weight decay (L2 for `adam`, decoupled for `adamw`)."""
    grad_clip: float = 5.0
    """Clip the gradients to this value (0 disables): their norm, or each value (see below)."""
    grad_clip_algorithm: str = "norm"
    """`norm` (rescale when the global norm exceeds `grad_clip`) or `value` (clamp each)."""
    accumulate: int = 1
    """Add the gradients of this many batches before each optimizer step."""
    schedule: str = "constant"
    """Learning rate after the warmup: `constant`; `cosine` (down to 0 at the last step);
    `step` (times `lr_gamma` every `lr_step_epochs` epochs); `plateau` (times `plateau_factor`
    when val CIDEr stops improving); `noam` (the Transformer paper's: up linearly for
    `warmup_steps`, then down as 1/sqrt(step), peaking at `lr`)."""
    warmup_steps: int = 0
    """Steps of linear warmup from 0 to `lr` (0 = none; `noam` needs one)."""
    lr_gamma: float = 0.1
    """`step` schedule: the learning rate is multiplied by this every `lr_step_epochs`."""
    lr_step_epochs: int = 3
    """`step` schedule: epochs between two multiplications by `lr_gamma`."""
    plateau_factor: float = 0.5
    """`plateau` schedule: the learning rate is multiplied by this when val CIDEr has not
    improved for more than `plateau_patience` validations."""
    plateau_patience: int = 2
    """`plateau` schedule: validations without a better val CIDEr tolerated before a cut."""
    min_lr: float = 0.0
    """`plateau` schedule: the learning rate is never cut below this."""
    label_smoothing: float = 0.0
    """Cross-entropy label smoothing: this much of every target's probability is spread over
    the whole vocabulary (0 = plain cross-entropy)."""
    unk_targets: bool = True
    """Train the model to predict `<unk>` where a caption has a word outside the vocabulary
    (as it reads one there); False leaves those targets out of the cross-entropy, as decoding
    never lets the model say `<unk>` anyway (`DecodingOptions.allow_unk`)."""
    caption_weights: str = "uniform"
    """Cross-entropy weight of each training caption: `uniform`, or `consensus`: its CIDEr-D
    against the image's other captions, scaled to a mean of 1 over the image's captions, so that
    captions the annotators agree on teach more than idiosyncratic ones. (SCST, which learns from
    the model's own captions, ignores it.)"""
    ema: float = 0.0
    """Weight averaging: validate, keep and export an exponential moving average of the
    weights, updated after every optimizer step with this decay (e.g. 0.99: about the last
    hundred steps; the first steps use less, (1 + step) / (10 + step)); 0 = the weights as
    trained."""
    average_last: int = 0
    """Weight averaging over the end of the run: from the start of the last this many epochs,
    validate, keep and export the mean of the weights as they are after each epoch (stochastic
    weight averaging over the tail of the decay); the run exports the latest mean, the mean of
    all those epochs at its end, whatever its val CIDEr (with `ema`, the mean of the moving
    average's weights). 0 = the weights as trained, exported at their best val CIDEr; so too a
    run stopped early (`patience`) before its last epochs."""
    scheduled_sampling: float = 0.0
    """Scheduled sampling: the largest probability of replacing each caption word the decoder
    reads by one drawn from its own prediction (0 = always the true words, the default)."""
    ss_start_epoch: int = 0
    """Scheduled sampling: the first epoch (counted from 0) with a probability above 0."""
    ss_ramp_epochs: int = 5
    """Scheduled sampling: epochs over which the probability rises linearly to its largest
    (`scheduled_sampling / ss_ramp_epochs` in the first; 0 = all of it at once)."""

    def __post_init__(self):
        _check_choice("objective", self.objective, OBJECTIVES)
        if self.lr is None:
            self.lr = DEFAULT_LR[self.objective]
        _check_choice("optimizer", self.optimizer, OPTIMIZERS)
        _check_choice("schedule", self.schedule, SCHEDULES)
        _check_choice("caption_weights", self.caption_weights, CAPTION_WEIGHTS)
        _check_choice("grad_clip_algorithm", self.grad_clip_algorithm, ("norm", "value"))
        for name in (
            "lr",
            "weight_decay",
            "grad_clip",
            "min_lr",
            "warmup_steps",
            "average_last",
            "plateau_patience",
            "ss_start_epoch",
            "ss_ramp_epochs",
        ):
            _check_range(name, getattr(self, name), 0, None)
        for name in ("accumulate", "lr_step_epochs"):
            _check_range(name, getattr(self, name), 1, None)
        for name in ("label_smoothing", "scheduled_sampling"):
            _check_range(name, getattr(self, name), 0, 1)
        _check_range("ema", self.ema, 0, 1, high_open=True)
        _check_range("lr_gamma", self.lr_gamma, 0, 1, low_open=True)
        _check_range("plateau_factor", self.plateau_factor, 0, 1, low_open=True, high_open=True)
        if self.schedule == "noam" and self.warmup_steps == 0:
            raise CaptionkitError("schedule noam needs warmup_steps > 0 (the step of its peak)")


SCST_BASELINES = ("mean", "greedy")


@dataclass
class ScstConfig:
    """Self-critical sequence training (`optim.objective: scst`, Rennie et al. 2017)."""

    samples: int = 5
    """Captions sampled per training image (K)."""
    baseline: str = "mean"
    """What a sample's reward is compared with: `mean` (the mean reward of the image's K-1 other
    samples, the "new self-critical" variant) or `greedy` (the reward of the greedy caption, as
    in the paper; one more decode per step)."""
    bleu_weight: float = 0.0
    """Reward = CIDEr-D + this x BLEU-4 of the sample (0 = CIDEr-D alone)."""
    temperature: float = 1.0
    """Sampling temperature (the log-probabilities trained are those of the tempered policy)."""
    lr: float = 5e-5
    """Learning rate of the SCST phase that `train.scst_epochs` adds after the cross-entropy
    epochs (a run given `--objective scst` uses `optim.lr`)."""
    collapse_std: float = 0.01
    """Warn when the std of the rewards among an image's samples, averaged over an epoch, falls
    below this: the samples have become alike and the gradient vanishes."""

    def __post_init__(self):
        _check_choice("scst.baseline", self.baseline, SCST_BASELINES)
        _check_range("scst.samples", self.samples, 2 if self.baseline == "mean" else 1, None)
        _check_range("scst.temperature", self.temperature, 0, None, low_open=True)
        _check_range("scst.lr", self.lr, 0, None, low_open=True)
        for name in ("bleu_weight", "collapse_std"):
            _check_range(f"scst.{name}", getattr(self, name), 0, None)


@dataclass
class TrainConfig:
    """The training loop."""

    epochs: int = 10
    """Passes over the training captions."""
    batch_size: int = 64
    """Captions per training step (when fine-tuning, whole images with all their captions: as
    many images as make about this many captions; with SCST, sampled captions: images of
    `scst.samples` samples each)."""
    seed: int = 0
    """Seed for weights, data order and dropout."""
    bucket_batches: int = 1
    """Sort pools of this many batches by caption length before batching: less padding, but
    less varied batches (1 = plain shuffled batches, the default; see BENCHMARKS.md)."""
    group_images: bool = False
    """Batches of whole images, each with all its captions (as many images as make about
    `batch_size` captions; the reference implementation's `seq_per_img`): the attention
    decoders then embed and project each image's grid once for all its captions instead of once
    per caption (fewer FLOPs a step), but the batches hold fewer images. `bucket_batches` does
    not apply (a warning says so)."""
    scst_epochs: int = 0
    """After the cross-entropy epochs, this many epochs of SCST (see `ScstConfig`) from the best
    cross-entropy checkpoint, in `RUN/scst`; the run keeps whichever phase's model has the
    better val CIDEr (0 = cross-entropy only)."""
    val_beam_size: int = 1
    """Beam size of the validation decode (1 = greedy)."""
    accelerator: str = "auto"
    """Lightning accelerator: `auto`, `cpu`, `gpu`."""
    workers: int = 2
    """Processes decoding and augmenting images when the encoder is fine-tuned (0 = none)."""
    init: str | None = None
    """A run folder to start from: its decoder weights and tokenizer, and its encoder (fine-tuned
    or not); the model name and settings must be the same."""
    patience: int = 0
    """Stop when val CIDEr has not improved for this many validations (0 = never stop early)."""
    precision: str = "32"
    """Lightning precision: `32`, `bf16-mixed` or `16-mixed` (16-mixed needs a GPU)."""
    deterministic: bool = False
    """Use only deterministic kernels (`torch.use_deterministic_algorithms`), so that two runs
    with the same seed, or a run and its resumed copy, give identical metrics (slower on GPU)."""
    checkpoint_every: int = 1000
    """Also save `checkpoints/last.safetensors` every this many optimizer steps (it is always
    saved after each validation); 0 = only after validations."""
    devices: int = 1
    """Devices (GPUs, or CPU processes) per node; with more than one, `strategy` `ddp`."""
    num_nodes: int = 1
    """Machines taking part (DDP over several nodes; launch with torchrun or SLURM)."""
    strategy: str = "auto"
    """Lightning strategy: `auto` (one process) or `ddp` (one process per device; the batch
    size is per device, so the global batch is `batch_size x devices x num_nodes`)."""
    ddp_timeout: int = 600
    """DDP: seconds a collective waits for the other processes before it fails (Lightning's
    default is 30 minutes). A process that dies is found within seconds anyway (its rank named);
    this ends the waits where every process lives but one hangs. Keep it above the longest time
    one rank works alone (writing a checkpoint or the exported model while the others wait)."""

    def __post_init__(self):
        _check_choice("precision", self.precision, PRECISIONS)
        _check_choice("strategy", self.strategy, STRATEGIES)
        if self.scst_epochs < 0:
            raise CaptionkitError(f"scst_epochs must be 0 or more, not {self.scst_epochs}")
        for name in ("devices", "num_nodes", "epochs", "batch_size", "ddp_timeout"):
            if getattr(self, name) < 1:
                raise CaptionkitError(f"{name} must be at least 1, not {getattr(self, name)}")
        if self.checkpoint_every < 0:
            raise CaptionkitError(
                f"checkpoint_every must be 0 or more, not {self.checkpoint_every}"
            )
        for name in ("workers", "patience"):
            _check_range(name, getattr(self, name), 0, None)


@dataclass
class RunConfig:
    """Everything a training run needs."""

    model: str = "show_tell"
    """Registered model name: `show_tell`, `attention`, `transformer` or `updown`."""
    model_args: dict = field(default_factory=dict)
    """Overrides of the model's config dataclass (e.g. `{"hidden_dim": 256}`)."""
    data: DataConfig = field(default_factory=DataConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    scst: ScstConfig = field(default_factory=ScstConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> RunConfig:
        kwargs = {k: v for k, v in d.items() if k not in GROUPS}
        kwargs.update({k: GROUPS[k](**d[k]) for k in GROUPS if k in d})
        return cls(**kwargs)

    @classmethod
    def from_yaml(cls, path: str | Path) -> RunConfig:
        """Read a config file: settings left out keep their defaults; an unknown key, a value of
        the wrong type or a model setting the model lacks is an error naming the file and key."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise CaptionkitError(f"{path}: no such config file") from None
        except (OSError, UnicodeDecodeError) as e:
            raise CaptionkitError(f"{path}: cannot read the config file ({e})") from None
        try:
            values = yaml.load(text, Loader=_YamlLoader)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            problem = getattr(e, "problem", None) or str(e).replace("\n", " ")
            raise CaptionkitError(f"{path}: not valid YAML{at}: {problem}") from None
        return run_config_from_mapping(values, str(path))

    def to_yaml(self, path: str | Path) -> None:
        """Write the config as YAML that `from_yaml` reads back equal."""
        text = yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=False)
        Path(path).write_text(_YAML_HEADER + text, encoding="utf-8")


GROUPS: dict[str, type] = {
    "data": DataConfig,
    "encoder": EncoderConfig,
    "optim": OptimConfig,
    "train": TrainConfig,
    "scst": ScstConfig,
}
_YAML_HEADER = (
    "# The resolved config of a captionkit run; `captionkit train --config THIS_FILE --out RUN`\n"
    "# trains it again (relative paths are read from the folder the command runs in).\n"
)


class _YamlLoader(yaml.SafeLoader):
    """`yaml.SafeLoader` that also reads `5e-4` as a number: YAML 1.1 wants a dot in a float
    (`5.0e-4`), so the usual way to write a learning rate would otherwise be text."""


_YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _group(cls: type, values, source: str, name: str):
    """The group `name` of the file as an instance of dataclass `cls`, every value checked."""
    hints = typing.get_type_hints(cls)
    values = known_keys(cls, values, source, name)
    checked = {k: check_value(v, hints[k], f"{source}: {name}.{k}") for k, v in values.items()}
    try:
        return cls(**checked)
    except CaptionkitError as e:  # the group's own checks (e.g. OptimConfig.schedule)
        raise CaptionkitError(f"{source}: {name}: {e}") from None


def run_config_from_mapping(values, source: str) -> RunConfig:
    """A `RunConfig` from a config file's contents (`source`: the file, for errors)."""
    from captionkit.models import model_entry

    top = known_keys(RunConfig, values, source, "")
    model = check_value(top.get("model", RunConfig.model), str, f"{source}: model")
    model_entry(model, f"{source}: model")  # a registered one
    model_args = top.get("model_args")  # None: all commented out
    model_args = check_value(
        {} if model_args is None else model_args, dict, f"{source}: model_args"
    )
    model_args = check_model_args(model, model_args, f"{source}: model_args")
    groups = {name: _group(cls, top.get(name), source, name) for name, cls in GROUPS.items()}
    return RunConfig(model=model, model_args=model_args, **groups)
