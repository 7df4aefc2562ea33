"""Generic JSON Lines, e.g. `captions.jsonl`: one object per line, one caption per object.

Keys: `image` and `caption` (required), `split` (optional: train/val/test; `restval` counts as
train and `dev` as val). The first object decides the "columns": when it lacks a required key the
file is rejected as a whole, because every other line would fail the same way.
"""

from __future__ import annotations

import json
from pathlib import Path

from captionkit.data.formats._common import RecordCollector, read_lines, split_name
from captionkit.data.problems import MALFORMED_ROW, Problems
from captionkit.data.records import ImageRecord
from captionkit.errors import CaptionkitError

REQUIRED_KEYS = ("image", "caption")


def looks_like(path: Path) -> bool:
    """True for any `.jsonl` file."""
    return path.suffix.lower() == ".jsonl"


def read(path: Path, problems: Problems | None = None) -> list[ImageRecord]:
    """Read all objects; images keep the order of their first caption."""
    problems = problems if problems is not None else Problems()
    collector = RecordCollector(problems)
    checked_keys = False
    for number, line in read_lines(path, problems):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        entry = _parse(line)
        if entry is None:
            problems.add(MALFORMED_ROW, where, "not a JSON object")
            continue
        if not checked_keys:
            _check_keys(path, entry)
            checked_keys = True
        image, caption = entry.get("image"), entry.get("caption")
        if not isinstance(image, str) or not image.strip() or not isinstance(caption, str):
            problems.add(MALFORMED_ROW, where, "expected text values for 'image' and 'caption'")
            continue
        split = split_name(entry.get("split"), problems, where)
        collector.add(image.strip(), caption, where, split)
    return collector.records()


def _parse(line: str) -> dict | None:
    try:
        entry = json.loads(line)
    except (json.JSONDecodeError, RecursionError):  # RecursionError: nested too deeply
        return None
    return entry if isinstance(entry, dict) else None


def _check_keys(path: Path, entry: dict) -> None:
    missing = [key for key in REQUIRED_KEYS if key not in entry]
    if missing:
        found = ", ".join(entry) or "nothing"
        raise CaptionkitError(
            f"{path}: missing column(s) {', '.join(missing)} in the first object (found: {found})"
        )
