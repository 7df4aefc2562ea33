"""Option groups of `captionkit` commands: decoding (`evaluate`, `caption`) and model settings
(`train`; its config options are generated from the config dataclasses, see `cli_train`).

Typer has no option groups, so `option_group` appends a group's options to a command's
signature and hands the command one value built from them: each option is defined once, and
each command takes one `DecodingOptions` or one `model_args` builder. Each group is a panel of
the command's `--help`.
Heavy imports (torch) stay inside the builders, as in `cli.py`, so `captionkit --help` starts
fast.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Annotated, Any

import typer

from captionkit.errors import CaptionkitError


def option_group(target: str | None, options: dict[str, tuple[Any, Any]],
                 build: Callable[[dict, dict], Any] | None = None) -> Callable:  # fmt: skip
    """Decorator: add `options` (name -> (Annotated type, default)) to a command and pass it
    `target=build(values of those options, the command's other arguments)` instead; with no
    target, pass nothing: the command reads the values from its context's `params` (the wrapper
    gets a copy of them, so popping them here leaves `ctx.params` whole)."""

    def decorate(command: Callable) -> Callable:
        own = [p for p in inspect.signature(command).parameters.values() if p.name != target]
        # The command's annotations are strings (`from __future__ import annotations`): Typer
        # needs the objects, and the target's type is never imported at module level.
        own = [p.replace(annotation=_evaluate(p.annotation, command)) for p in own]
        added = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation,
                                   default=default)
                 for name, (annotation, default) in options.items()]  # fmt: skip

        @functools.wraps(command)
        def wrapper(**kwargs):
            values = {name: kwargs.pop(name) for name in options}
            if target is None:
                return command(**kwargs)
            return command(**kwargs, **{target: build(values, kwargs)})

        parameters = own + added
        wrapper.__signature__ = inspect.Signature(parameters)
        wrapper.__annotations__ = {p.name: p.annotation for p in parameters}
        return wrapper

    return decorate


def _evaluate(annotation, command: Callable):
    return eval(annotation, command.__globals__) if isinstance(annotation, str) else annotation


# --- decoding -----------------------------------------------------------------------------------


def _opt(flag: str, help: str, **kwargs) -> typer.models.OptionInfo:
    return typer.Option(flag, help=help, rich_help_panel="Decoding", **kwargs)


DECODING_OPTIONS: dict[str, tuple[Any, Any]] = {
    "beam_size": (Annotated[int | None, _opt("--beam-size", "Beam size (1 = greedy; default 3).")],
                  None),
    "length_penalty": (Annotated[str | None, _opt(
        "--length-penalty", "Beam ranking: none (total log-probability), average (per token) or "
        "ALPHA (GNMT: score / ((5 + length) / 6) ** ALPHA).")], None),
    "no_repeat_ngram": (Annotated[int, _opt(
        "--no-repeat-ngram", "Never repeat an n-gram of N tokens in a caption (0 = off).",
        metavar="N")], 0),
    "beam_groups": (Annotated[int | None, _opt(
        "--beam-groups", "Diverse beam search: split the beams into G groups, each penalised "
        "for the tokens earlier groups chose (it must divide --beam-size).", metavar="G")], None),
    "diversity": (Annotated[float | None, _opt(
        "--diversity", "Diverse beam search: the penalty per earlier group choosing the same "
        "token (default 0.5).", metavar="LAMBDA")], None),
    "allow_unk": (Annotated[bool, _opt("--allow-unk", "Let captions contain <unk> (never, by "
                                       "default).")], False),
    "forbid_unk": (Annotated[bool, _opt("--forbid-unk", "The default now (kept for old "
                                        "scripts).", hidden=True)], False),
    "ensemble_mean": (Annotated[str | None, _opt(
        "--ensemble-mean", "Several --checkpoint: average the runs' probabilities (probability, "
        "the default) or log-probabilities (log_probability) at each step.")], None),
    "sample": (Annotated[bool, _opt("--sample", "Sample captions instead of searching.")], False),
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
    "seed": (Annotated[int | None, _opt("--seed", "Sampling: random seed.", metavar="S")], None),
}  # fmt: skip
N_BEST_OPTION = (Annotated[int, _opt("--n-best", "Captions per image from the beam, best first.")],
                 1)  # fmt: skip


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
    return (Annotated[bool, _opt("--bad-endings/--no-bad-endings", "Never end a caption on an "
                                 "article, preposition or conjunction (\"a man riding a\").")],
            default)  # fmt: skip


def decoding_options(length_penalty: str | None = None, no_repeat_ngram: int = 0,
                     forbid_unk: bool = False, **given) -> Any:  # fmt: skip
    """The command line's decoding options as one `DecodingOptions` (None = not given: its
    default), which checks them; `--forbid-unk` is what happens anyway."""
    from captionkit.decoding import DecodingOptions

    if forbid_unk and given.get("allow_unk"):
        raise CaptionkitError("--forbid-unk and --allow-unk contradict each other")
    given = {k: v for k, v in given.items() if v is not None}
    return DecodingOptions(length_penalty=parse_length_penalty(length_penalty),
                           no_repeat_ngram_size=no_repeat_ngram, **given)  # fmt: skip


def with_decoding_options(n_best: bool = False, bad_endings: bool = False) -> Callable:
    """Decorator: the command gets the decoding options as `decoding: DecodingOptions`
    (`--n-best` too when `n_best`; `bad_endings`: the default of `--bad-endings`)."""
    options = dict(DECODING_OPTIONS)
    if n_best:  # listed right after --beam-size
        options = {"beam_size": options.pop("beam_size"), "n_best": N_BEST_OPTION, **options}
    options["bad_endings"] = bad_endings_option(bad_endings)
    return option_group("decoding", options, lambda values, _: decoding_options(**values))


def _ropt(flag: str, help: str, **kwargs) -> typer.models.OptionInfo:
    return typer.Option(flag, help=help, rich_help_panel="Re-ranking", **kwargs)


RERANK_OPTIONS: dict[str, tuple[Any, Any]] = {
    "rerank": (Annotated[str, _ropt(
        "--rerank", "Re-rank each image's candidates: auto (consensus for a run with a "
        "neighbour index decoded by beam search, else none), none, consensus (CIDEr-D against "
        "the captions of the nearest training images) or mbr (against the other candidates).")],
        "auto"),
    "rerank_candidates": (Annotated[int, _ropt(
        "--rerank-candidates", "Candidates per image: the beam's n-best (the beam is widened to "
        "N) or, with --sample, N samples.", metavar="N")], 8),
    "rerank_candidates_from": (Annotated[str, _ropt(
        "--rerank-candidates-from", "wide_beam (the beam widened to N) | finished (the beam "
        "keeps N finished hypotheses: about the plain beam's cost).")], "wide_beam"),
    "rerank_weight": (Annotated[float, _ropt(
        "--rerank-weight", "Final score = (1 - W) x re-ranking score + W x log-probability, "
        "each scaled to [0, 1] over the candidates.", metavar="W")], 0.3),
    "rerank_k": (Annotated[int, _ropt(
        "--rerank-k", "Consensus: how many nearest training images vote.", metavar="K")], 60),
}  # fmt: skip


def with_rerank_options() -> Callable:
    """Decorator: the command gets `rerank: RerankOptions` from the --rerank options."""

    def build(values: dict, _) -> Any:
        from captionkit.reranking import RerankOptions

        return RerankOptions(values["rerank"], values["rerank_candidates"],
                             values["rerank_weight"], values["rerank_k"],
                             values["rerank_candidates_from"])  # fmt: skip

    return option_group("rerank", RERANK_OPTIONS, build)


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


def model_settings(model: str) -> dict[str, type]:
    """The config fields a user may set for a registered model, with their types."""
    from captionkit.models import MODELS
    from captionkit.models import model_settings as settings

    if model not in MODELS:
        raise CaptionkitError(f"--model must be one of {', '.join(MODELS)}, not {model!r}")
    return settings(model)


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


def model_args(model: str, model_arg: list[str] | None = None, base: dict | None = None,
               base_source: str = "", **named) -> dict:  # fmt: skip
    """The command line's model options as `RunConfig.model_args` for `model`: the named
    options (`MODEL_FIELDS`, None = unset) and `KEY=VALUE` strings, checked against the model's
    config dataclass, over `base` (a config file's `model_args`, named `base_source` in errors)."""
    from captionkit.models import DERIVED_FIELDS, MODELS
    from captionkit.training.config import check_model_args

    settings = model_settings(model)
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
            raise CaptionkitError(f"{_flag(option)}: model '{model}' has no such setting "
                                  f"(its settings: {valid})")  # fmt: skip
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
    try:  # the config's own checks, before minutes of feature extraction
        MODELS[model][0](**dict.fromkeys(DERIVED_FIELDS, 1), **args)
    except (TypeError, ValueError) as e:
        raise CaptionkitError(f"model '{model}': {e}") from None
    return args


def with_model_options(command: Callable) -> Callable:
    """Decorator: the command gets the model options as `model_args(model, base, base_source)`,
    which returns `RunConfig.model_args` for the model it names (the model may come from a config
    file, read after the options)."""
    return option_group(
        "model_args", MODEL_OPTIONS, lambda values, _: functools.partial(model_args, **values)
    )(command)


# `serve`'s options.
HostOpt = Annotated[str, typer.Option("--host", help="Address to listen on.")]
PortOpt = Annotated[int, typer.Option("--port", min=0, max=65535)]
ServeDeviceOpt = Annotated[str, typer.Option("--device", help="cpu | cuda | cuda:N.")]
ServeBatchOpt = Annotated[
    int, typer.Option("--batch-size", min=1, help="Most images per model batch (1: off).")
]
MaxWaitOpt = Annotated[
    float, typer.Option("--max-wait-ms", min=0, help="Wait for a batch to fill (ms).")
]
MaxUploadOpt = Annotated[float, typer.Option("--max-upload-mb", min=0.001)]
MaxFilesOpt = Annotated[int, typer.Option("--max-files", min=1, help="Images per request.")]
RequestTimeoutOpt = Annotated[
    float, typer.Option("--request-timeout", min=0, help="Seconds a request may take (0: none).")
]
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
ResizeOpt = Annotated[
    str | None,
    typer.Option("--resize", help="squash (the whole photo) | crop (its centre); default: train's"),
]
QuantizeOpt = Annotated[
    str,
    typer.Option(
        "--quantize",
        help="Faster CPU inference: none (float32); int8 (the decoder's Linear and LSTM layers "
        "in int8, the encoder in bf16 where the CPU computes it natively); bf16 (both in bf16, "
        "where native). Captions may change a little: see BENCHMARKS.md.",
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
