"""Option groups of `captionkit` commands: decoding (`evaluate`, `caption`) and model settings
(`train`); the groups generated from dataclasses (`train`'s config, re-ranking, `serve`'s
settings, the config fields of `prepare` and `extract`) are in `cli_train`.

Typer has no option groups, so `option_group` hands a command one value built from a group of
options (one `DecodingOptions`, one `model_args` builder): each option is defined once, and each
group is a panel of the command's `--help`. A group's options are made when its command is first
parsed or its help shown (`GroupedCommand`), never for `captionkit --help`: so their defaults and
help may come from the modules that own them, which import torch, and the CLI still starts fast.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Callable
from typing import Annotated, Any

import typer
from typer.core import TyperCommand

from captionkit.errors import CaptionkitError

GROUPS = "captionkit_option_groups"  # attribute of a command function: its `OptionGroup`s
VALUES = "captionkit.option_values"  # ctx.meta: a group's target -> its options' values
_CONTEXT = "ctx"  # the context parameter a group adds to a command that has none


@dataclasses.dataclass(frozen=True)
class OptionGroup:
    """Options that reach a command as one argument, `target`."""

    target: str
    options: Callable[[], dict[str, tuple[Any, Any]]]
    """Makes the options, name -> (Annotated type, default), on the command's first use."""
    build: Callable[[dict], Any]
    """The options' values (by name) -> the argument."""


def option_group(
    target: str, options: Callable[[], dict[str, tuple[Any, Any]]], build: Callable[[dict], Any]
) -> Callable:
    """Decorator: the command (made with `cls=GroupedCommand`) gets `target=build(values)` from
    the options `options()` makes; it has no parameter for each of them."""
    group = OptionGroup(target, options, build)

    def decorate(command: Callable) -> Callable:
        own = [p for p in inspect.signature(command).parameters.values() if p.name != target]
        # The command's annotations are strings (`from __future__ import annotations`): Typer
        # needs the objects, and the target's type is never imported at module level.
        own = [p.replace(annotation=_evaluate(p.annotation, command)) for p in own]
        # The values wait in the context (`GroupedCommand.invoke`): Typer hands it to a
        # parameter annotated as one, the command's own or one added here.
        context = next((p.name for p in own if p.annotation is typer.Context), None)
        added = (
            []
            if context
            else [
                inspect.Parameter(
                    _CONTEXT, inspect.Parameter.KEYWORD_ONLY, annotation=typer.Context
                )
            ]
        )

        @functools.wraps(command)
        def wrapper(**kwargs):
            ctx = kwargs[context] if context else kwargs.pop(_CONTEXT)
            return command(**kwargs, **{target: build(ctx.meta[VALUES][target])})

        parameters = own + added
        wrapper.__signature__ = inspect.Signature(parameters)
        wrapper.__annotations__ = {p.name: p.annotation for p in parameters}
        # After the groups of the decorators below: their panels come first in --help.
        setattr(wrapper, GROUPS, (*getattr(command, GROUPS, ()), group))
        return wrapper

    return decorate


def _evaluate(annotation, command: Callable):
    return eval(annotation, command.__globals__) if isinstance(annotation, str) else annotation


def click_params(options: dict[str, tuple[Any, Any]]) -> list:
    """The click parameters Typer makes of `options` (name -> (Annotated type, default)), through
    a one-command app of their own."""

    def command(**values) -> None:
        """Never called: its signature carries the options."""

    parameters = [
        inspect.Parameter(
            name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation, default=default
        )
        for name, (annotation, default) in options.items()
    ]
    command.__signature__ = inspect.Signature(parameters)
    command.__annotations__ = {p.name: p.annotation for p in parameters}
    app = typer.Typer(add_completion=False)
    app.command()(command)
    return typer.main.get_command(app).params


class GroupedCommand(TyperCommand):
    """A command with option groups (`option_group`): their options join its own on first use
    (parsing or --help), in the groups' order, and on invoke their values leave `ctx.params` (the
    function has no parameter for them) for `ctx.meta[VALUES]`, where the groups' decorators
    build their arguments from them."""

    grouped: list[tuple[OptionGroup, list]] | None = None

    def get_params(self, ctx: typer.Context) -> list:
        self.make_groups()
        return super().get_params(ctx)

    def make_groups(self) -> None:
        """Add the groups' options to the command's parameters, once."""
        if self.grouped is None:
            groups = getattr(self.callback, GROUPS, ())  # Typer's wrapper keeps the attribute
            self.grouped = [(group, click_params(group.options())) for group in groups]
            self.params += [param for _, params in self.grouped for param in params]

    def invoke(self, ctx: typer.Context) -> Any:
        values = ctx.meta.setdefault(VALUES, {})
        for group, params in self.grouped or []:
            values[group.target] = {p.name: ctx.params.pop(p.name) for p in params}
        return super().invoke(ctx)


# --- decoding -----------------------------------------------------------------------------------


def _opt(flag: str, help: str, **kwargs) -> typer.models.OptionInfo:
    return typer.Option(flag, help=help, rich_help_panel="Decoding", **kwargs)


def _decoding_options() -> dict[str, tuple[Any, Any]]:
    """The decoding options, name -> (Annotated type, default); None: not given, the default of
    `DecodingOptions`, which each option's help shows."""
    from captionkit.decoding.options import (
        DEFAULT_BEAM_SIZE,
        DEFAULT_DIVERSITY,
        ENSEMBLE_MEANS,
        DecodingOptions,
    )

    ensemble_mean = DecodingOptions.ensemble_mean  # the field's default
    return {
        "beam_size": (Annotated[int | None, _opt(
            "--beam-size", "Beam size (1 = greedy); re-ranking widens it to its candidates "
            "(--rerank-candidates).", show_default=f"{DEFAULT_BEAM_SIZE}, 1 with --sample")],
            None),
        "length_penalty": (Annotated[str | None, _opt(
            "--length-penalty", "Beam ranking: none (total log-probability), average (per token) "
            "or ALPHA (GNMT: score / ((5 + length) / 6) ** ALPHA).")], None),
        "no_repeat_ngram": (Annotated[int, _opt(
            "--no-repeat-ngram", "Never repeat an n-gram of N tokens in a caption (0 = off).",
            metavar="N")], 0),
        "beam_groups": (Annotated[int | None, _opt(
            "--beam-groups", "Diverse beam search: split the beams into G groups, each penalised "
            "for the tokens earlier groups chose (it must divide --beam-size).", metavar="G")],
            None),
        "diversity": (Annotated[float | None, _opt(
            "--diversity", "Diverse beam search: the penalty per earlier group choosing the same "
            "token.", metavar="LAMBDA", show_default=str(DEFAULT_DIVERSITY))], None),
        "allow_unk": (Annotated[bool, _opt("--allow-unk", "Let captions contain <unk>.")], False),
        "forbid_unk": (Annotated[bool, _opt("--forbid-unk", "The default now (kept for old "
                                            "scripts).", hidden=True)], False),
        "ensemble_mean": (Annotated[str | None, _opt(
            "--ensemble-mean", "Several --checkpoint: at each step, average the runs' "
            f"probabilities ({ENSEMBLE_MEANS[0]}) or log-probabilities ({ENSEMBLE_MEANS[1]}).",
            show_default=ensemble_mean)], None),
        "sample": (Annotated[bool, _opt("--sample", "Sample captions instead of searching.")],
                   False),
        "num_samples": (Annotated[int | None, _opt(
            "--num-samples", "Sampling: captions drawn per image (evaluate scores the most "
            "probable).", metavar="K")], None),
        "temperature": (Annotated[float | None, _opt(
            "--temperature", "Sampling: divide the logits by T.", metavar="T")], None),
        "top_k": (Annotated[int | None, _opt(
            "--top-k", "Sampling: only the K most probable tokens.", metavar="K")], None),
        "top_p": (Annotated[float | None, _opt(
            "--top-p", "Sampling: nucleus, the most probable tokens up to probability P.",
            metavar="P")], None),
        "seed": (Annotated[int | None, _opt("--seed", "Sampling: random seed.", metavar="S")],
                 None),
    }  # fmt: skip


N_BEST_OPTION = (
    Annotated[int, _opt("--n-best", "Captions per image from the beam, best first.")],
    1,
)


def _flag(name: str) -> str:
    return "--" + {"no_repeat_ngram": "no-repeat-ngram"}.get(name, name.replace("_", "-"))


def parse_length_penalty(text: str | None) -> float | str | None:
    """`none`, `average` or a number, as `DecodingOptions.length_penalty` takes it."""
    if text is None or text.lower() == "none":
        return None
    if text.lower() == "average":
        return "average"
    try:
        return float(text)
    except ValueError:
        raise CaptionkitError(
            f"--length-penalty must be none, average or a number, not {text!r}"
        ) from None


def bad_endings_option(default: bool) -> tuple[Any, bool]:
    """`--bad-endings/--no-bad-endings`, on by default for `caption` and `serve`."""
    return (
        Annotated[
            bool,
            _opt(
                "--bad-endings/--no-bad-endings",
                'Never end a caption on an article, preposition or conjunction ("a man riding a").',
            ),
        ],
        default,
    )


def decoding_options(
    length_penalty: str | None = None, no_repeat_ngram: int = 0, forbid_unk: bool = False, **given
) -> Any:
    """The command line's decoding options as one `DecodingOptions` (None = not given: its
    default), which checks them; `--forbid-unk` is what happens anyway."""
    from captionkit.decoding import DecodingOptions

    if forbid_unk and given.get("allow_unk"):
        raise CaptionkitError("--forbid-unk and --allow-unk contradict each other")
    given = {k: v for k, v in given.items() if v is not None}
    return DecodingOptions(
        length_penalty=parse_length_penalty(length_penalty),
        no_repeat_ngram_size=no_repeat_ngram,
        **given,
    )


def with_decoding_options(n_best: bool = False, bad_endings: bool = False) -> Callable:
    """Decorator: the command gets the decoding options as `decoding: DecodingOptions`
    (`--n-best` too when `n_best`; `bad_endings`: the default of `--bad-endings`)."""

    def options() -> dict[str, tuple[Any, Any]]:
        made = _decoding_options()
        if n_best:  # listed right after --beam-size
            made = {"beam_size": made.pop("beam_size"), "n_best": N_BEST_OPTION, **made}
        return {**made, "bad_endings": bad_endings_option(bad_endings)}

    return option_group("decoding", options, lambda values: decoding_options(**values))


# --- model settings -----------------------------------------------------------------------------


# Common options -> the config fields they set: the first one the chosen model has.
MODEL_FIELDS = {
    "rnn": ("rnn",),
    "hidden_dim": ("hidden_dim", "d_model"),
    "embed_dim": ("embed_dim",),
    "layers": ("num_layers", "n_layers"),
    "dropout": ("dropout",),
}


def _mopt(flag: str, help: str, **kwargs) -> typer.models.OptionInfo:
    return typer.Option(flag, help=help, rich_help_panel="Model", **kwargs)


MODEL_OPTIONS: dict[str, tuple[Any, Any]] = {
    "rnn": (Annotated[str | None, _mopt("--rnn", "Show-and-Tell: lstm or gru.")], None),
    "hidden_dim": (Annotated[int | None, _mopt(
        "--hidden-dim", "Recurrent state size (the Transformer's d_model).")], None),
    "embed_dim": (Annotated[int | None, _mopt("--embed-dim", "Word embedding size.")], None),
    "layers": (Annotated[int | None, _mopt("--layers", "Stacked layers.")], None),
    "dropout": (Annotated[float | None, _mopt("--dropout", "Dropout probability.")], None),
    "model_arg": (Annotated[list[str] | None, _mopt(
        "--model-arg", "Any field of the model's config, typed by it (repeatable).",
        metavar="KEY=VALUE")], None),
}  # fmt: skip


def _typed(text: str, kind: type, key: str):
    """`text` as a value of the field's type (bool, int, float or str)."""
    if kind is bool and text.lower() in ("true", "1", "yes", "false", "0", "no"):
        return text.lower() in ("true", "1", "yes")
    try:
        if kind in (int, float, str):
            return kind(text)
    except ValueError:
        pass
    expected = {int: "an integer", float: "a number", bool: "true or false"}.get(kind, str(kind))
    raise CaptionkitError(f"--model-arg {key}={text}: expected {expected}")


def model_args(
    model: str,
    model_arg: list[str] | None = None,
    base: dict | None = None,
    base_source: str = "",
    **named,
) -> dict:
    """The command line's model options as `RunConfig.model_args` for `model`: the named
    options (`MODEL_FIELDS`, None = unset) and `KEY=VALUE` strings, checked against the model's
    config dataclass, over `base` (a config file's `model_args`, named `base_source` in errors)."""
    from captionkit.models import model_entry
    from captionkit.training.config import check_model_args

    entry = model_entry(model, "--model")
    settings = entry.settings()
    valid = ", ".join(settings)
    args: dict[str, Any] = {}

    def put(field: str, value, source: str) -> None:
        if field in args and args[field] != value:
            raise CaptionkitError(f"{source}: {field} is already set to {args[field]!r}")
        args[field] = value

    for option, value in named.items():
        if value is None:
            continue
        field = next((f for f in MODEL_FIELDS[option] if f in settings), None)
        if field is None:
            raise CaptionkitError(
                f"{_flag(option)}: model '{model}' has no such setting (its settings: {valid})"
            )
        put(field, value, _flag(option))
    for item in model_arg or []:
        key, sep, text = item.partition("=")
        if not sep:
            raise CaptionkitError(f"--model-arg must be KEY=VALUE, not {item!r}")
        if key not in settings:
            raise CaptionkitError(
                f"--model-arg: model '{model}' has no setting {key!r} (valid: {valid})"
            )
        put(key, _typed(text, settings[key], key), f"--model-arg {item}")
    # The command line wins over the file, key by key.
    args = {**check_model_args(model, base or {}, base_source), **args}
    entry.check_settings(args)  # the config's own checks, before minutes of feature extraction
    return args


def with_model_options(command: Callable) -> Callable:
    """Decorator: the command gets the model options as `model_args(model, base, base_source)`,
    which returns `RunConfig.model_args` for the model it names (the model may come from a config
    file, read after the options)."""
    return option_group(
        "model_args", lambda: MODEL_OPTIONS, lambda values: functools.partial(model_args, **values)
    )(command)


# `serve`'s options.
HostOpt = Annotated[str, typer.Option("--host", help="Address to listen on.")]
PortOpt = Annotated[int, typer.Option("--port", min=0, max=65535)]
ServeDeviceOpt = Annotated[str, typer.Option("--device", help="cpu | cuda | cuda:N.")]
ApiKeyOpt = Annotated[
    str | None,
    typer.Option(
        "--api-key",
        envvar="CAPTIONKIT_API_KEY",
        show_envvar=True,
        help="Requests to every route but / and /health must send 'Authorization: Bearer KEY' "
        "(401 otherwise); the web page asks for the key.",
    ),
]

# `extract`'s options.
ExtractDeviceOpt = Annotated[
    str, typer.Option("--device", help="auto (CUDA when available) | cpu | cuda | cuda:N.")
]
QuantizeOpt = Annotated[
    str,
    typer.Option(
        "--quantize",
        help="Faster CPU inference: none (float32); int8 (the decoder's Linear and LSTM layers "
        "in int8, the encoder in bf16 where that is faster here); bf16 (both in bf16, where "
        "native). int8 decodes 1.5x faster, captions within the noise of float32's; from image "
        "files 1.15-1.8x, as the CPU's bf16 speeds the encoder or not (docs/decoding.md).",
    ),
]
AmpOpt = Annotated[
    str, typer.Option("--amp", help="Autocast: none | bf16 | fp16 (fp16 on CUDA only).")
]
VerifyOpt = Annotated[
    bool,
    typer.Option(
        "--verify",
        help="Check every block of the cached store against its checksum "
        "and extract the rows of damaged blocks again.",
    ),  # fmt: skip
]
