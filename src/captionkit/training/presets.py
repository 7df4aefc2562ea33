"""Named training recipes: what `captionkit train` trains when no `--config` file is given.

A preset is a partial config (the groups of `RunConfig`, as in a YAML file) over the dataclass
defaults; options given on the command line override it. `best` is the recipe that won the
experiments of docs/experiments.md ("The default recipe: how it was chosen"; its figures:
BENCHMARKS.md, "Caption quality"), `fast` a quick Show-and-Tell for smoke runs and the demo,
and `none` the plain dataclass defaults.

`best` was tuned on 600 training images (30 epochs of 47 optimizer steps) and scales with the
training set (`TrainingSize`): a larger one gets as many epochs as make a budget of optimizer
steps (each epoch already shows the model many more captions), the same decay and weight
averaging stretched over those epochs, an SCST phase (it lost on 600 images and gains on
Flickr8k's 6,000), and bf16 mixed precision where it runs faster than fp32 (`fast_bf16`: 1.8x
on a 2-core EPYC; 0.76x on a Xeon without AMX, which trains in fp32). Up to `SCALE_FROM_IMAGES`
images the recipe is the one tuned on 600 (BENCHMARKS.md "Flickr8k").
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from captionkit.encoders.extraction import fast_bf16
from captionkit.errors import CaptionkitError
from captionkit.training.config import RunConfig, TrainConfig, run_config_from_mapping

PRESETS: dict[str, dict] = {
    "best": {
        "model": "attention",
        "optim": {
            "lr": 2e-3,
            "schedule": "step",
            "lr_gamma": 0.8,
            "lr_step_epochs": 3,
            "average_last": 5,
        },
        "train": {"epochs": 30, "patience": 0, "val_beam_size": 3},
    },
    "fast": {
        "model": "show_tell",
        "train": {"epochs": 10},
    },
    "none": {},
}
DEFAULT_PRESET = "best"

SUMMARIES = {
    "best": "Show-Attend-Tell over the embedded feature grid, Adam at 2e-3 times 0.8 every 3 "
    "epochs for 30 epochs, keeping the mean of the weights of the last 5",
    "fast": "a quick Show-and-Tell (10 epochs), for smoke runs and the demo",
    "none": "the plain defaults of the config dataclasses",
}

# How `best` scales (see the module docstring and BENCHMARKS.md "Flickr8k").
SCALE_FROM_IMAGES = 2000  # above flickr8k-mini's 600, where the recipe was tuned, below 6,000
STEP_BUDGET = 5000  # cross-entropy optimizer steps: 11 epochs of Flickr8k's 30,000 captions
EPOCH_RANGE = (8, 30)  # a huge dataset still passes over its captions a few times
SCST_EPOCHS = 4
SCST_LR = 1e-4  # twice the dataclass default: a phase of 4 epochs, not tens as on COCO
SCALED = ("best",)  # the presets that scale with the training set


@dataclass(frozen=True)
class TrainingSize:
    """What a recipe scales with: the training split's images and captions."""

    images: int
    captions: int


def preset_config(name: str, size: TrainingSize | None = None) -> RunConfig:
    """The `RunConfig` of preset `name`, scaled to a training set of `size` when the preset
    scales (an unknown name is an error listing the known ones)."""
    if name not in PRESETS:
        raise CaptionkitError(f"unknown preset {name!r} (choose from {', '.join(PRESETS)})")
    config = run_config_from_mapping(PRESETS[name], f"preset {name}")
    if name in SCALED and size is not None and size.images > SCALE_FROM_IMAGES:
        config = run_config_from_mapping(_merge(PRESETS[name], scaled_best(size)), "preset best")
    return config


def training_size(data: str, images: str | None = None) -> TrainingSize:
    """The size of the training split of the dataset at `data` (its problems are left for the
    run to report)."""
    from captionkit.data import load_dataset
    from captionkit.data.problems import Problems

    dataset = load_dataset(data, images, problems=Problems(max_printed=0))
    train = dataset.split("train")
    return TrainingSize(len(train), sum(len(r.captions) for r in train))


def scaled_best(size: TrainingSize, batch_size: int = TrainConfig.batch_size) -> dict:
    """The settings `best` changes for a training set of `size` (a partial config)."""
    steps = math.ceil(size.captions / batch_size)
    low, high = EPOCH_RANGE
    epochs = min(high, max(low, math.ceil(STEP_BUDGET / steps)))
    return {
        "optim": {
            "lr_step_epochs": max(1, round(epochs / 10)),
            "average_last": max(3, round(epochs / 6)),
        },
        "train": {
            "epochs": epochs,
            "scst_epochs": SCST_EPOCHS,
            "precision": "bf16-mixed" if _fast_bf16() else "32",
        },
        "scst": {"lr": SCST_LR},
    }


def _fast_bf16() -> bool:
    """Where training will run (CUDA when there is one): bf16 faster than float32?"""
    import torch

    return fast_bf16("cuda" if torch.cuda.is_available() else "cpu")


def _merge(base: dict, over: dict) -> dict:
    """`base` with the groups of `over` merged into its own (a copy)."""
    merged = dict(base)
    for group, values in over.items():
        merged[group] = {**base.get(group, {}), **values}
    return merged


def describe(name: str, size: TrainingSize | None = None) -> str:
    """What preset `name` trains, for the start of `captionkit train`: for a scaled `best`,
    what it chose for this training set and why."""
    options = "(--preset fast|best|none, --config FILE; options given override it)"
    if name not in SCALED or size is None or size.images <= SCALE_FROM_IMAGES:
        return f"recipe: preset {name!r}: {SUMMARIES[name]} {options}"
    c = preset_config(name, size)
    o, t = c.optim, c.train
    steps = math.ceil(size.captions / t.batch_size)
    precision = (
        "bf16 mixed precision (faster than fp32 here)"
        if t.precision != "32"
        else "fp32 (bf16 is not faster here)"
    )
    return (
        f"recipe: preset 'best' for {size.images:,} training images ({size.captions:,} "
        f"captions, {steps} steps an epoch): Show-Attend-Tell, {t.epochs} epochs (about "
        f"{STEP_BUDGET:,} optimizer steps), Adam at {o.lr:g} times {o.lr_gamma:g} every "
        f"{o.lr_step_epochs} epoch(s), the mean of the last {o.average_last} epochs' weights; "
        f"then {t.scst_epochs} epochs of SCST at {c.scst.lr:g} (above {SCALE_FROM_IMAGES:,} "
        f"training images: it lost on 600, gained on Flickr8k's 6,000), kept if val CIDEr rises; "
        f"{precision} {options}"
    )
