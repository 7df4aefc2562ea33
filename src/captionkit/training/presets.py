"""Named training recipes: what `captionkit train` trains when no `--config` file is given.

A preset is a partial config (the groups of `RunConfig`, as in a YAML file) over the dataclass
defaults; options given on the command line override it. `best` is the recipe that won the
experiments of docs/experiments.md ("The default recipe: how it was chosen"; its figures:
BENCHMARKS.md, "Caption quality"), `fast` a quick Show-and-Tell for smoke runs and
the demo, and `none` the plain dataclass defaults.
"""

from __future__ import annotations

from captionkit.errors import CaptionkitError
from captionkit.training.config import RunConfig, run_config_from_mapping

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


def preset_config(name: str) -> RunConfig:
    """The `RunConfig` of preset `name` (an unknown name is an error listing the known ones)."""
    if name not in PRESETS:
        raise CaptionkitError(f"unknown preset {name!r} (choose from {', '.join(PRESETS)})")
    return run_config_from_mapping(PRESETS[name], f"preset {name}")


def describe(name: str) -> str:
    """One line saying what preset `name` trains, for the start of `captionkit train`."""
    return f"recipe: preset {name!r}: {SUMMARIES[name]} (--preset fast|best|none, --config FILE)"
