"""Options generated from dataclasses: `train`'s from the config dataclasses
(`captionkit.training.config`), one per field of `RunConfig` and of each of its groups (`data`,
`encoder`, `optim`, ...), and the re-ranking options of `evaluate`, `caption` and `serve` from
`RerankOptions`. Each has its field's type and default, the field's docstring as its help and the
group's panel in `--help`; a field added to a dataclass is an option with no change here:
`--field-name` (`FLAGS` keeps the older names, `PREFIXED` groups start with the group's name).
`NOT_OPTIONS` lists the fields that are none, with the reason. Where the default preset sets a
field, `train --help` says that its default comes from the preset, and the preset's value.

The dataclasses' modules import torch (the default encoder comes from the encoders), so the
options are made only when their command is parsed or its help shown, never for
`captionkit --help` (`GroupedCommand`, `TrainCommand`). Values given on the command line go over
the config file's (or the defaults) field by field (`run_config`): an option left out never
overrides the file.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import typing
from collections.abc import Callable, Collection, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from captionkit.cli_options import GroupedCommand, click_params, option_group
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
    "rerank.method": "--rerank",
    "serve.request_timeout_s": "--request-timeout",
    "serve.body_timeout_s": "--body-timeout",
    "serve.retry_after_s": "--retry-after",
}
# Groups whose options are `--group-field-name` (`--scst-temperature` is not the sampling one,
# `--rerank-k` says whose k it is).
PREFIXED = ("scst", "rerank")
# The --help panel of each group's options (another group's: its name, capitalized); RunConfig's
# own fields (--model) join --out and --config in the first panel.
PANELS = {
    "data": "Data",
    "encoder": "Encoder",
    "optim": "Optimization",
    "train": "Run",
    "scst": "SCST",
    "rerank": "Re-ranking",
}
# Where `TrainCommand` leaves the options given on the command line ("group.field" -> value).
GIVEN = "captionkit.train.given"
_KINDS = (bool, int, float, str)


@dataclasses.dataclass(frozen=True)
class ConfigOption:
    """The option of one dataclass field."""

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
    def field(self) -> str:
        """The dataclass field's name."""
        return self.path.rpartition(".")[2]

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


def dataclass_options(cls: type, group: str, skip: Collection[str] = ()) -> list[ConfigOption]:
    """The options of the fields of dataclass `cls`, named for the group `group` ("": RunConfig
    itself) and in its panel (`PANELS`), but the fields whose "group.field" paths are in
    `skip`."""
    from captionkit.training.config_fields import field_docs

    docs, hints, options = field_docs(cls), typing.get_type_hints(cls), []
    panel = PANELS.get(group, group.capitalize()) if group else None
    for field in dataclasses.fields(cls):
        path, hint = f"{group}.{field.name}" if group else field.name, hints[field.name]
        if path in skip:
            continue
        if _kind(hint) not in _KINDS:
            raise TypeError(
                f"config field {path} ({hint}) cannot be a train option: "
                f"list it in {__name__}.NOT_OPTIONS, with the reason"
            )
        flag, doc = _flag(group, field.name), docs.get(field.name, "")
        options.append(ConfigOption(path, flag, hint, _default(field), doc, panel))
    return options


def config_options(taken: Iterable[str] = ()) -> list[ConfigOption]:
    """The option of each field of `RunConfig` and of its groups (`GROUPS`), in the dataclasses'
    order, but `NOT_OPTIONS`. `taken`: the command's other flags and parameter names; a generated
    option repeating one of them, or another's, is an error naming both (rename one in `FLAGS`)."""
    from captionkit.training.config import GROUPS, RunConfig

    options = dataclass_options(RunConfig, "", {*NOT_OPTIONS, *GROUPS})
    for group, cls in GROUPS.items():
        options += dataclass_options(cls, group, NOT_OPTIONS)
    owners = dict.fromkeys(taken, "another option of train")
    for option in options:
        for key in (*option.flags, option.name):
            if key in owners:
                raise ValueError(
                    f"train option {key} would set both {owners[key]} and "
                    f"{option.path}: rename one in {__name__}.FLAGS"
                )
            owners[key] = option.path
    return options


def _paths(settings: dict, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """("group.field", value) of each setting of a partial config."""
    for key, value in settings.items():
        if isinstance(value, dict):  # a group: its fields
            yield from _paths(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def preset_defaults(options: list[ConfigOption]) -> dict[str, str]:
    """What `train --help` gives as the default of each option whose field the default preset
    sets or scales with the training set, by path: "from --preset, attention for best". The
    preset, not the field's default, is what runs."""
    from captionkit.training import presets

    name = presets.DEFAULT_PRESET
    fixed = dict(_paths(presets.PRESETS[name]))
    scaled = set()
    if name in presets.SCALED:  # which fields it scales: the same whatever the size
        scaled = {path for path, _ in _paths(presets.scaled_best(presets.TrainingSize(1, 1)))}
    above = f", scaled above {presets.SCALE_FROM_IMAGES:,} training images"
    return {
        o.path: f"from --preset, {fixed.get(o.path, o.default)} for {name}"
        + (above if o.path in scaled else "")
        for o in options
        if o.path in fixed or o.path in scaled
    }


def _escaped(text: str) -> str:
    """`text` shown as it is by Typer's rich help (which reads `[...]` as markup)."""
    try:
        from rich.markup import escape
    except ImportError:  # no rich: plain help, no markup
        return text
    return escape(text)


def _typer_options(
    options: list[ConfigOption], defaults: dict[str, str] | None = None
) -> dict[str, tuple[Any, Any]]:
    """`options` as `option_group` takes them: name -> (Annotated type, default); `defaults`:
    what --help says instead of the field's default, by path."""
    typed = {}
    for o in options:
        declaration = "/".join(o.flags)  # "--strict/--no-strict"
        shown = (defaults or {}).get(o.path, True)
        info = typer.Option(
            declaration,
            help=_escaped(o.help),
            rich_help_panel=o.panel,
            show_default=_escaped(shown) if isinstance(shown, str) else shown,
        )
        typed[o.name] = (Annotated[o.hint, info], o.default)
    return typed


def _describe_presets(params: list) -> None:
    """`--preset`'s help and default, from the presets themselves."""
    from captionkit.training.presets import DEFAULT_PRESET, PRESETS

    (preset,) = [p for p in params if p.name == "preset"]
    preset.help = (
        f"Recipe when no --config: {' | '.join(PRESETS)} (what each trains: "
        "`captionkit.training.presets`)."
    )
    preset.show_default = DEFAULT_PRESET


class TrainCommand(GroupedCommand):
    """`train`'s command: the parameters Typer made of the function (`--out`, `--config`...),
    then, added on first use, the config options and the option groups (the Model panel). The
    config options reach the function through `ctx.meta[GIVEN]`, and only when given on the
    command line (see `run_config`)."""

    config_options: list[ConfigOption] | None = None

    def get_params(self, ctx: typer.Context) -> list:
        if self.config_options is None:
            self.make_groups()  # first: their flags are taken, and they come after
            taken = {key for p in self.params for key in (*p.opts, *p.secondary_opts, p.name)}
            self.config_options = config_options(taken)
            # After the function's own first-panel options, before the Model panel.
            at = next(
                (i for i, p in enumerate(self.params) if getattr(p, "rich_help_panel", None)),
                len(self.params),
            )
            typed = _typer_options(self.config_options, preset_defaults(self.config_options))
            self.params[at:at] = click_params(typed)
            _describe_presets(self.params)
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


def _options_of(
    owner: Callable[[], type], group: str, fields: Collection[str] | None = None
) -> list[ConfigOption]:
    """The options of the fields of dataclass `owner()`, named as group `group`'s; only those of
    `fields`, when given, and then in a command's first panel."""
    made = dataclass_options(owner(), group)
    if fields is None:
        return made
    return [dataclasses.replace(o, panel=None) for o in made if o.field in fields]


def with_dataclass_options(
    target: str, owner: Callable[[], type], group: str, fields: Collection[str] | None = None
) -> Callable:
    """Decorator: the command gets `target`, an instance of dataclass `owner()` (imported only
    then) made from the options of its fields (`_options_of`), over its defaults."""

    def build(values: dict) -> Any:
        return owner()(**{o.field: values[o.name] for o in _options_of(owner, group, fields)})

    return option_group(target, lambda: _typer_options(_options_of(owner, group, fields)), build)


def _rerank_options() -> type:
    from captionkit.reranking import RerankOptions

    return RerankOptions


def with_rerank_options() -> Callable:
    """Decorator: the command gets `rerank: RerankOptions` from an option per field
    (`--rerank`, `--rerank-candidates`...)."""
    return with_dataclass_options("rerank", _rerank_options, "rerank")


def _config_group(group: str) -> type:
    """The dataclass of config group `group` (`DataConfig`, `EncoderConfig`...)."""
    from captionkit.training.config import GROUPS

    return GROUPS[group]


def with_config_fields(target: str, group: str, fields: tuple[str, ...]) -> Callable:
    """Decorator: the command gets `target`, the dataclass of config group `group` made from the
    options of its `fields`, named as `train`'s."""
    return with_dataclass_options(target, functools.partial(_config_group, group), group, fields)


def _serve_settings() -> type:
    from captionkit.serving.settings import ServeSettings

    return ServeSettings


# The `ServeSettings` fields that `serve` has options for (the others keep their defaults).
SERVE_FIELDS = (
    "max_files",
    "batch_size",
    "max_wait_ms",
    "max_queue",
    "max_uploads",
    "body_timeout_s",
    "min_body_rate",
    "retry_after_s",
    "request_timeout_s",
)
_MIB = 1024 * 1024


def _serve_options() -> list[ConfigOption]:
    """`serve`'s options of `SERVE_FIELDS`, after `--max-upload-mb`: `max_upload_bytes` in MiB."""
    from captionkit.training.config_fields import field_docs

    cls = _serve_settings()
    doc = f"{field_docs(cls)['max_upload_bytes']} In MiB."
    upload = ConfigOption(
        "serve.max_upload_bytes", "--max-upload-mb", float, cls().max_upload_bytes / _MIB, doc, None
    )
    return [upload, *_options_of(_serve_settings, "serve", SERVE_FIELDS)]


def with_serve_settings() -> Callable:
    """Decorator: the command gets `settings: ServeSettings` from `_serve_options`, over the
    dataclass's defaults."""

    def build(values: dict) -> Any:
        settings = {o.field: values[o.name] for o in _serve_options()}
        settings["max_upload_bytes"] = int(settings["max_upload_bytes"] * _MIB)
        return _serve_settings()(**settings)

    return option_group("settings", lambda: _typer_options(_serve_options()), build)


def _objective_lr(settings: dict, objective: str, config_file: Path | None) -> None:
    """--objective without --lr: the new objective's default learning rate (`OptimConfig.lr`)
    and schedule, not the file's or preset's, which are for its own objective (SCST's rate is a
    tenth of XE's, and the best preset's decay was tuned for cross-entropy epochs)."""
    if objective == settings["optim"]["objective"]:
        return
    if config_file:
        typer.echo(
            f"--objective {objective}: its default learning rate, not "
            f"{settings['optim']['lr']:g} ({config_file}'s for "
            f"{settings['optim']['objective']}); --lr sets another",
            err=True,
        )
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


def run_config(
    ctx: typer.Context, config_file: Path | None, model_args: Callable, preset: str | None = None
) -> RunConfig:
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
    settings["model_args"] = model_args(
        settings["model"], base=config.model_args, base_source=f"{config_file}: model_args"
    )
    return RunConfig.from_dict(settings)
