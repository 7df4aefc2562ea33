"""`captionkit compare`: one table of several runs' test metrics and the settings they differ in.

`captionkit evaluate` keeps what it measured in the run folder as `eval_<split>.json` (the
metrics, the decoding, the data); this module reads those and each run's `config.json`.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime
import io
import json
from dataclasses import dataclass
from pathlib import Path

from captionkit.errors import CaptionkitError
from captionkit.metrics.coco_metrics import METRIC_KEYS
from captionkit.models import model_entry
from captionkit.models.run_folder import read_config
from captionkit.training.config import RunConfig

# Settings that never explain a difference in results: left out of the table.
IGNORED_SETTINGS = {"data.cache_dir", "train.workers", "train.checkpoint_every", "model_args"}
FORMATS = ("md", "csv", "json")


def eval_file(run_dir: str | Path, split: str) -> Path:
    """Where `captionkit evaluate` keeps a run's metrics on `split`."""
    return Path(run_dir) / f"eval_{split}.json"


def save_run_evaluation(
    run_dir: str | Path,
    split: str,
    metrics: dict[str, float],
    images: int,
    decoding: str,
    data: str | Path,
) -> Path:
    """Record an evaluation in the run folder (the latest one of a split replaces the last)."""
    record = {
        "split": split,
        "data": str(data),
        "images": images,
        "decoding": decoding,
        "metrics": metrics,
        "evaluated_at": datetime.datetime.now().isoformat(timespec="seconds"),
    }
    path = eval_file(run_dir, split)
    path.write_text(json.dumps(record, indent=2) + "\n")
    return path


@dataclass
class RunSummary:
    """What the comparison table says about one run."""

    run: str
    settings: dict[str, object]
    """Flattened settings: `model`, `model.<field>`, `encoder`, and the run config's groups."""
    evaluation: dict | None
    """The run's `eval_<split>.json`, or None if it was never evaluated on the split."""
    best_val: dict
    """The metrics row of the best validation (`val/CIDEr`, `epoch`), if known."""


def _flatten(value, prefix: str = "") -> dict[str, object]:
    if not isinstance(value, dict):
        return {prefix: value}
    flat: dict[str, object] = {}
    for key, inner in value.items():
        flat.update(_flatten(inner, f"{prefix}.{key}" if prefix else key))
    return flat


def _model_defaults(name: str | None) -> dict:
    """The default of every field of a registered model's config that has one."""
    try:
        fields = dataclasses.fields(model_entry(name).config_class)
    except CaptionkitError:  # a run of a model this version no longer has
        return {}
    return {f.name: f.default for f in fields if f.default is not dataclasses.MISSING}


def summarize_run(run_dir: str | Path, split: str = "test") -> RunSummary:
    """A run folder's settings, best validation and metrics on `split`."""
    config = read_config(Path(run_dir))
    # Runs saved before a setting existed trained with its default: fill those in, so that only
    # real differences show.
    run = {**_flatten(RunConfig().to_dict()), **_flatten(config.get("run", {}))}
    settings = {
        k: v
        for k, v in run.items()
        if k.split(".")[0] not in IGNORED_SETTINGS and k not in IGNORED_SETTINGS
    }
    model = config.get("model", {})
    settings["model"] = model.get("name")
    settings.update(_flatten(_model_defaults(model.get("name")), "model"))
    settings.update(_flatten(model.get("config", {}), "model"))
    settings["encoder"] = config.get("encoder", {}).get("name")
    path = eval_file(run_dir, split)
    evaluation = None
    if path.is_file():
        try:
            evaluation = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise CaptionkitError(f"{path}: not valid JSON ({e})") from None
    return RunSummary(str(run_dir), settings, evaluation, config.get("metrics", {}))


def _differing(summaries: list[RunSummary]) -> list[str]:
    """Setting names whose values are not the same in every run (all of them for one run: only
    the model and encoder then)."""
    keys = list(dict.fromkeys(k for s in summaries for k in s.settings))
    if len(summaries) == 1:
        return ["model", "encoder"]
    return [
        k
        for k in keys
        if len({json.dumps(s.settings.get(k), sort_keys=True) for s in summaries}) > 1
    ]


def comparison_table(summaries: list[RunSummary]) -> tuple[list[str], list[dict]]:
    """(columns, one row per run), the best test CIDEr first; runs without metrics last."""
    settings = ["model", "encoder"]
    settings += [k for k in _differing(summaries) if k not in settings]
    columns = ["run", *settings, "best val CIDEr", "epoch", "decoding", *METRIC_KEYS]
    rows = []
    for s in summaries:
        metrics = (s.evaluation or {}).get("metrics", {})
        row = {
            "run": s.run,
            **{k: s.settings.get(k) for k in settings},
            "best val CIDEr": s.best_val.get("val/CIDEr"),
            "epoch": s.best_val.get("epoch"),
            "decoding": (s.evaluation or {}).get("decoding"),
            **{k: metrics.get(k) for k in METRIC_KEYS},
        }
        rows.append(row)
    rows.sort(key=lambda r: -r["CIDEr"] if r["CIDEr"] is not None else float("inf"))
    return columns, rows


def _cell(value) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 10 else f"{value:g}"
    return json.dumps(value) if isinstance(value, (list, dict)) else str(value)


def format_table(columns: list[str], rows: list[dict], fmt: str = "md") -> str:
    """The table as Markdown (also readable in a terminal), CSV or JSON."""
    if fmt == "json":
        return json.dumps(rows, indent=2) + "\n"
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.DictWriter(out, columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        return out.getvalue()
    cells = [columns] + [[_cell(r[c]) for c in columns] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    lines = ["| " + " | ".join(v.ljust(w) for v, w in zip(row, widths)) + " |" for row in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines) + "\n"


def table_format(path: Path) -> str:
    """The format an `--output` file asks for by its suffix."""
    fmt = path.suffix.lstrip(".").lower()
    fmt = "md" if fmt in ("md", "markdown", "txt") else fmt
    if fmt not in FORMATS:
        raise CaptionkitError(f"--output {path}: unknown table format (use .md, .csv or .json)")
    return fmt
