"""What the fields of the config dataclasses (`captionkit.training.config`) accept and say: a value
checked against a field's type (config files, `model_args`), and the docstring written under each
field (`captionkit train --help` shows it).

Only the standard library here: the CLI reads these without importing torch.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import textwrap
import typing

from captionkit.errors import CaptionkitError


def field_docs(cls: type) -> dict[str, str]:
    """The docstring under each field of dataclass `cls` (the string literal right after the
    field's annotated assignment, as in `training/config.py`), whitespace collapsed to single
    spaces; fields without one are left out. Fields of base dataclasses come first."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        body = ast.parse(textwrap.dedent(inspect.getsource(klass))).body[0].body
        for node, after in zip(body, body[1:]):
            doc = after.value.value if isinstance(after, ast.Expr) else None
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(doc, str)
            ):
                docs[node.target.id] = " ".join(doc.split())
    return docs


def expected(hint) -> str:
    """A field type in words, for error messages."""
    options = typing.get_args(hint)
    if type(None) in options:
        return " or ".join(expected(o) for o in options if o is not type(None)) + " or null"
    words = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}
    return words.get(hint, "a mapping" if hint is dict else str(hint))


def check_value(value, hint, where: str):
    """`value` if it has the field type `hint` (an int is a float too, and becomes one)."""
    options = typing.get_args(hint)
    kind = next((o for o in options if o is not type(None)), hint) if options else hint
    if value is None and type(None) in options:
        return None
    if kind is float and type(value) is int:
        return float(value)
    # bool is an int in Python, but `true` is no batch size.
    if isinstance(value, kind) and (kind is bool or not isinstance(value, bool)):
        return value
    raise CaptionkitError(f"{where} must be {expected(hint)}, not {value!r}")


def known_keys(cls: type, values, source: str, prefix: str) -> dict:
    """`values` (None = empty), refused unless it is a mapping of field names of dataclass `cls`
    (`prefix`: where the mapping is in the file, "" at the top)."""
    names = [f.name for f in dataclasses.fields(cls)]
    if values is None:  # a group whose settings are all commented out, or an empty file
        return {}
    if not isinstance(values, dict):
        raise CaptionkitError(
            f"{source}: {prefix or 'the file'} must be a mapping of settings "
            f"({', '.join(names)}), not {values!r}"
        )
    for key in values:
        if key not in names:
            dotted, where = (f"{prefix}.", f" in {prefix}") if prefix else ("", "")
            raise CaptionkitError(
                f"{source}: unknown key '{dotted}{key}' (valid{where}: {', '.join(names)})"
            )
    return values


def check_model_args(model: str, args: dict, source: str) -> dict:
    """`args` checked against the config dataclass of registered model `model`: known fields,
    values of their types (ints become floats where the field is a float) and the config's own
    checks. `source` (e.g. "cfg.yaml: model_args") begins every error."""
    from captionkit.models import model_entry  # torch, only now

    entry = model_entry(model, f"{source}: model")
    settings = entry.settings()
    for key in args:
        if key not in settings:
            raise CaptionkitError(
                f"{source}: model '{model}' has no setting '{key}' (valid: {', '.join(settings)})"
            )
    checked = {k: check_value(v, settings[k], f"{source}.{k}") for k, v in args.items()}
    try:
        entry.check_settings(checked)
    except CaptionkitError as e:
        raise CaptionkitError(f"{source}: {e}") from None
    return checked
