"""Caption tables with one row per caption, in three common variants:

- Kaggle Flickr8k `captions.txt`: CSV with header `image,caption`; captions holding commas are
  quoted;
- Kaggle Flickr30k `results.csv`: `|`-separated with header `image_name| comment_number| comment`,
  a space after each `|`, no quoting, and values that may carry stray spaces;
- the generic `captions.csv`: columns `image` and `caption` plus an optional `split`
  (`train`/`val`/`test`; `restval` counts as train and `dev` as val).

Column names are matched ignoring case and surrounding spaces, and the separator is `|` when the
header holds one, else `,`. Each line is parsed on its own (captions never span lines in these
files), so one broken quote spoils one row rather than swallowing the rest of the file. When the
caption is the last column, a row with too many fields is an unquoted separator inside the caption
and the rest of the line is taken as the caption.
"""

from __future__ import annotations

import csv
from pathlib import Path

from captionkit.data.formats._common import RecordCollector, first_line, read_lines, split_name
from captionkit.data.problems import MALFORMED_ROW, Problems
from captionkit.data.records import ImageRecord
from captionkit.errors import CaptionkitError

# Accepted names per column, first the Kaggle Flickr8k / generic name, then Flickr30k's.
COLUMN_NAMES = {"image": ("image", "image_name"), "caption": ("caption", "comment")}
REQUIRED_COLUMNS = tuple(COLUMN_NAMES)
# Files that are caption tables by name: a wrong header there is an error, not "unknown format".
KNOWN_NAMES = ("captions.txt", "captions.csv")


def looks_like(path: Path) -> bool:
    """True for a `.csv`/`.txt` named like a caption table or with image and caption columns."""
    if path.suffix.lower() not in (".csv", ".txt"):
        return False
    if path.name.lower() in KNOWN_NAMES:
        return True
    header = first_line(path)
    return not _missing_columns(_fields(header, _delimiter(header)))


def read(path: Path, problems: Problems | None = None) -> list[ImageRecord]:
    """Read the table; images keep the order of their first caption.

    Splits come from the `split` column when there is one, else they are left empty.
    """
    problems = problems if problems is not None else Problems()
    lines = read_lines(path, problems)
    _, header_line = next(lines, (1, ""))
    delimiter = _delimiter(header_line)
    header = [name.strip().lower() for name in _fields(header_line, delimiter)]
    columns = _column_indexes(path, header)
    collector = RecordCollector(problems)
    for number, line in lines:
        if not line.strip():
            continue  # blank lines (often one at the end) carry nothing
        where = f"{path}:{number}"
        row = _fit_row(line, delimiter, header, columns)
        if row is None:
            detail = f"expected {len(header)} fields separated by {delimiter!r}"
            problems.add(MALFORMED_ROW, where, detail)
            continue
        image = row[columns["image"]].strip()
        if not image:
            problems.add(MALFORMED_ROW, where, "no image name")
            continue
        split = split_name(row[columns["split"]], problems, where) if "split" in columns else ""
        collector.add(image, row[columns["caption"]], where, split)
    return collector.records()


def _delimiter(header_line: str) -> str:
    return "|" if "|" in header_line else ","


def _fields(line: str, delimiter: str) -> list[str]:
    """Split one line; `|` files are never quoted, so quotes there are part of the text."""
    if delimiter == "|":
        return [field.strip() for field in line.split("|")]
    try:
        return next(csv.reader([line], skipinitialspace=True), [])
    except csv.Error:  # e.g. a stray carriage return inside the line: no usable fields
        return []


def _missing_columns(header: list[str]) -> list[str]:
    names = {name.strip().lower() for name in header}
    return [c for c, aliases in COLUMN_NAMES.items() if not names.intersection(aliases)]


def _column_indexes(path: Path, header: list[str]) -> dict[str, int]:
    """Index of `image`, `caption` and (if present) `split`; a missing column is fatal."""
    missing = _missing_columns(header)
    if missing:
        found = ", ".join(header) or "nothing"
        raise CaptionkitError(
            f"{path}: missing column(s) {', '.join(missing)} in the header (found: {found})"
        )
    columns = {
        column: next(header.index(a) for a in aliases if a in header)
        for column, aliases in COLUMN_NAMES.items()
    }
    if "split" in header:
        columns["split"] = header.index("split")
    return columns


def _fit_row(
    line: str, delimiter: str, header: list[str], columns: dict[str, int]
) -> list[str] | None:
    """The line's fields, one per header column; None when the row cannot be made to fit."""
    row = _fields(line, delimiter)
    width = len(header)
    if len(row) > width and columns["caption"] == width - 1:
        # An unquoted separator inside the caption: the caption is the rest of the line.
        return row[: width - 1] + [line.split(delimiter, width - 1)[-1].strip()]
    if len(row) > width or len(row) <= max(columns["image"], columns["caption"]):
        return None
    return row + [""] * (width - len(row))  # a missing trailing `split` means no split
