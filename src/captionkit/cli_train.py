"""`train`'s config options, generated from the config dataclasses (`captionkit.training.config`):
one option per field of `RunConfig` and of each of its groups (`data`, `encoder`, `optim`, ...),
with the field's type and default, the field's docstring as its help and the group's panel in
`--help`. A field added to a config dataclass is an option with no change here: `--field-name`
(`FLAGS` keeps the older names, `PREFIXED` groups start with the group's name). `NOT_OPTIONS`
lists the fields that are none, with the reason.

The config module imports torch (the default encoder comes from the encoders), so `TrainCommand`
makes the options only when `train` is parsed or its help shown, never for `captionkit --help`.
Values given on the command line go over the config file's (or the defaults) field by field
(`run_config`): an option left out never overrides the file.
"""

from __future__ import annotations

import contextlib
import dataclasses
import typing
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from typer.core import TyperCommand

from captionkit.cli_options import option_group
from captionkit.errors import CaptionkitError

if TYPE_CHECKING:
    from captionkit.training import RunConfig

# Config fields ("group.field", or a field of RunConfig) that are no `train` options, and why.
NOT_OPTIONS = {
    "model_args": "a mapping: the Model panel's options set it (--hidden-dim, --model-arg K=V...)",
}
# Options named otherwise than `--field-name`: the names they had before they were generated.
FLAGS = {
    "encoder.name": "--encoder",
    "encoder.weights": "--encoder-weights",
    "encoder.finetune": "--finetune-encoder",
    "encoder.lr": "--encoder-lr",
}
# Groups whose options are `--group-field-name` (`--scst-temperature` is not the sampling one).
PREFIXED = ("scst",)
# The --help panel of each group's options (another group's: its name, capitalized); RunConfig's
# own fields (--model) join --out and --config in the first panel.
PANELS = {"data": "Data", "encoder": "Encoder", "optim": "Optimization", "train": "Run",
          "scst": "SCST"}  # fmt: skip
# Where `TrainCommand` leaves the options given on the command line ("group.field" -> value).
GIVEN = "captionkit.train.given"
_KINDS = (bool, int, float, str)


@dataclasses.dataclass(frozen=True)
class ConfigOption:
    """The `train` option of one config field."""

    path: str  # "optim.lr", or "model" for a field of RunConfig itself
    flag: str  # "--lr"
    hint: Any  # the field's type, e.g. `float | None`
    default: Any  # the field's default, as --help shows it (None: none shown)
    help: str  # the field's docstring
    panel: str | None  # None: the first panel ("Options")

    @property
    def name(self) -> str:
        """The click parameter's name: the key of `ctx.params`."""
        return self.flag[2:].replace("-", "_")

    @property
    def flags(self) -> tuple[str, ...]:
        """Every flag the option takes: `--x/--no-x` for a true/false field."""
        return (self.flag, f"--no-{self.flag[2:]}") if _kind(self.hint) is bool else (self.flag,)


def _kind(hint) -> Any:
    """The type of a field that may also be None: `int | None` -> `int`."""
    options = [o for o in typing.get_args(hint) if o is not type(None)]
    return options[0] if typing.get_origin(hint) is not None and len(options) == 1 else hint


def _flag(group: str, name: str) -> str:
    path = f"{group}.{name}" if group else name
    prefix = f"{group}-" if group in PREFIXED else ""
    return FLAGS.get(path, "--" + prefix + name.replace("_", "-"))


def _default(field: dataclasses.Field) -> Any:
    if field.default_factory is not dataclasses.MISSING:
        field_default = field.default_factory()
    else:
        field_default = None if field.default is dataclasses.MISSING else field.default
    return None if field_default == "" else field_default  # --data: no default


def _group_options(group: str, cls: type) -> list[ConfigOption]:
    """The options of the fields of dataclass `cls`, the group `group` of RunConfig ("": RunConfig
    itself, whose groups are no options)."""
    from captionkit.training.config import GROUPS
    from captionkit.training.config_fields import field_docs

    docs, hints, options = field_docs(cls), typing.get_type_hints(cls), []
    for field in dataclasses.fields(cls):
        path, hint = f"{group}.{field.name}" if group else field.name, hints[field.name]
        if path in NOT_OPTIONS or (not group and field.name in GROUPS):
            continue
        if _kind(hint) not in _KINDS:
            raise TypeError(f"config field {path} ({hint}) cannot be a train option: "
                            f"list it in {__name__}.NOT_OPTIONS, with the reason")  # fmt: skip
        panel = PANELS.get(group, group.capitalize()) if group else None
        flag, doc = _flag(group, field.name), docs.get(field.name, "")
        options.append(ConfigOption(path, flag, hint, _default(field), doc, panel))
    return options


def config_options(taken: Iterable[str] = ()) -> list[ConfigOption]:
    """The option of each field of `RunConfig` and of its groups (`GROUPS`), in the dataclasses'
    order, but `NOT_OPTIONS`. `taken`: the command's other flags and parameter names; a generated
    option repeating one of them, or another's, is an error naming both (rename one in `FLAGS`)."""
    from captionkit.training.config import GROUPS, RunConfig

    groups = {"": RunConfig, **GROUPS}
    options = [o for group, cls in groups.items() for o in _group_options(group, cls)]
    owners = dict.fromkeys(taken, "another option of train")
    for option in options:
        for key in (*option.flags, option.name):
            if key in owners:
                raise ValueError(f"train option {key} would set both {owners[key]} and "
                                 f"{option.path}: rename one in {__name__}.FLAGS")  # fmt: skip
            owners[key] = option.path
    return options


def _escaped(text: str) -> str:
    """`text` shown as it is by Typer's rich help (which reads `[...]` as markup)."""
    try:
        from rich.markup import escape
    except ImportError:  # no rich: plain help, no markup
        return text
    return escape(text)


def _typer_options(options: list[ConfigOption]) -> dict[str, tuple[Any, Any]]:
    """`options` as `option_group` takes them: name -> (Annotated type, default)."""
    typed = {}
    for o in options:
        declaration = "/".join(o.flags)  # "--strict/--no-strict"
        info = typer.Option(declaration, help=_escaped(o.help), rich_help_panel=o.panel)
        typed[o.name] = (Annotated[o.hint, info], o.default)
    return typed


def _click_params(options: list[ConfigOption]) -> list:
    """The click parameters Typer makes of `options` (through a one-command app of its own)."""

    def command() -> None:
        """Never called: its signature carries the options."""

    app = typer.Typer(add_completion=False)
    app.command()(option_group(None, _typer_options(options))(command))
    return typer.main.get_command(app).params


class TrainCommand(TyperCommand):
    """`train`'s command: the parameters Typer made of the function (`--out`, `--config`, the
    Model panel...) and, added on first use, the config options; those reach the function
    through `ctx.meta[GIVEN]`, and only when given on the command line (see `run_config`)."""

    config_options: list[ConfigOption] | None = None

    def get_params(self, ctx: typer.Context) -> list:
        if self.config_options is None:
            taken = {key for p in self.params for key in (*p.opts, *p.secondary_opts, p.name)}
            self.config_options = config_options(taken)
            # After the function's own first-panel options, before the Model panel.
            at = next((i for i, p in enumerate(self.params)
                       if getattr(p, "rich_help_panel", None)), len(self.params))  # fmt: skip
            self.params[at:at] = _click_params(self.config_options)
        return super().get_params(ctx)

    def invoke(self, ctx: typer.Context) -> Any:
        given = {}
        for option in self.config_options or []:
            value = ctx.params.pop(option.name)  # the function has no parameter for it
            # By name: Typer brings its own copy of click, whose ParameterSource is not click's.
            if ctx.get_parameter_source(option.name).name == "COMMANDLINE":
                given[option.path] = value
        ctx.meta[GIVEN] = given
        return super().invoke(ctx)


def _objective_lr(settings: dict, objective: str, config_file: Path | None) -> None:
    """--objective without --lr: the new objective's default learning rate (`OptimConfig.lr`)
    and schedule, not the file's or preset's, which are for its own objective (SCST's rate is a
    tenth of XE's, and the best preset's decay was tuned for cross-entropy epochs)."""
    if objective == settings["optim"]["objective"]:
        return
    if config_file:
        typer.echo(f"--objective {objective}: its default learning rate, not "
                   f"{settings['optim']['lr']:g} ({config_file}'s for "
                   f"{settings['optim']['objective']}); --lr sets another", err=True)  # fmt: skip
    _default_rate(settings)


def _default_rate(settings: dict) -> None:
    """The config defaults' learning rate (None: the objective's), schedule and weight averaging
    in `settings`."""
    from captionkit.training.config import OptimConfig

    defaults = OptimConfig()
    for name in ("schedule", "warmup_steps", "lr_gamma", "lr_step_epochs", "average_last"):
        settings["optim"][name] = getattr(defaults, name)
    settings["optim"]["lr"] = None


def _preset(name: str | None, given: dict) -> RunConfig:
    """Preset `name` (None: the default), scaled to the training set of the given --data when
    the preset scales (`training.presets`); says what it chose."""
    from captionkit.training.presets import (
        DEFAULT_PRESET,
        SCALED,
        describe,
        preset_config,
        training_size,
    )

    name, data, size = name or DEFAULT_PRESET, given.get("data.data"), None
    if data and name in SCALED:
        # Unreadable data: the run says why, under its bad-input rules.
        with contextlib.suppress(CaptionkitError):
            size = training_size(data, given.get("data.images"))
    config = preset_config(name, size)
    typer.echo(describe(name, size))
    return config


def run_config(ctx: typer.Context, config_file: Path | None, model_args: Callable,
               preset: str | None = None) -> RunConfig:  # fmt: skip
    """The `train` command's config: `config_file` (or else the `preset`, by default the best
    recipe: `training.presets`) with the options given on the command line over it
    (`ctx.meta[GIVEN]`, from `TrainCommand`); `model_args(model, base, base_source)` merges the
    Model panel's options into the file's `model_args`."""
    from captionkit.training import RunConfig
    from captionkit.training.presets import DEFAULT_PRESET, PRESETS

    if config_file and preset:
        raise CaptionkitError("--preset and --config: the config file is the recipe; give one")
    given = ctx.meta[GIVEN]
    config = RunConfig.from_yaml(config_file) if config_file else _preset(preset, given)
    settings = config.to_dict()
    if "optim.objective" in given and "optim.lr" not in given:
        _objective_lr(settings, given["optim.objective"], config_file)
    tuned = not config_file and "optim" in PRESETS.get(preset or DEFAULT_PRESET, {})
    if tuned and given.get("model", settings["model"]) != settings["model"]:
        # The preset's learning rate, decay and averaging were tuned for its own decoder alone.
        typer.echo(
            f"--model {given['model']}: the default learning rate, schedule and no weight "
            f"averaging, not the preset's (tuned for {settings['model']}); --lr, --schedule, "
            "--average-last set others"
        )
        _default_rate(settings)
    for path, value in given.items():
        group, _, key = path.rpartition(".")
        (settings[group] if group else settings)[key] = value
    if not settings["data"]["data"]:
        ctx.fail("Missing option '--data' (or data.data in the --config file).")
    settings["model_args"] = model_args(settings["model"], base=config.model_args,
                                        base_source=f"{config_file}: model_args")  # fmt: skip
    return RunConfig.from_dict(settings)
