"""Bad input that a run survives: each problem is counted by kind, the first few are printed as one
warning line each, and the full list can be written into the run folder.

Readers and the feature extractor report into a `Problems` collector instead of raising, so that a
dataset with a few bad files still trains; `strict=True` turns the first problem into an error.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from captionkit.errors import CaptionkitError

# The kinds used across the project (a kind is free text; these keep reports consistent).
MISSING_IMAGE = "missing_image"
UNREADABLE_IMAGE = "unreadable_image"
TOO_LARGE_IMAGE = "too_large_image"
EMPTY_CAPTION = "empty_caption"
BAD_ENCODING = "bad_encoding"
DUPLICATE_CAPTION = "duplicate_caption"
IMAGE_WITHOUT_CAPTION = "image_without_caption"
MALFORMED_ROW = "malformed_row"
TRUNCATED_CAPTION = "truncated_caption"
UNSAFE_IMAGE_PATH = "unsafe_image_path"


@dataclass
class Problem:
    kind: str
    where: str
    """The file (and line, as `file:line`) concerned."""
    detail: str


@dataclass
class Problems:
    """Collects problems; prints the first `max_printed` of each kind as warnings, then only
    counts them, so that a flood of one kind never hides the others."""

    strict: bool = False
    """Raise `CaptionkitError` at the first problem instead of skipping."""
    max_printed: int = 10
    """Warning lines printed per kind before the rest are only counted."""
    items: list[Problem] = field(default_factory=list)
    quiet_kinds: tuple[str, ...] = (TRUNCATED_CAPTION,)
    """Kinds that are counted but never printed one by one (they are expected)."""
    _counts: Counter = field(default_factory=Counter, repr=False)

    def add(self, kind: str, where: str | Path, detail: str) -> None:
        problem = Problem(kind, str(where), detail)
        if self.strict and kind not in self.quiet_kinds:
            raise CaptionkitError(f"{problem.where}: {problem.detail} (--strict)")
        self.items.append(problem)
        self._counts[kind] += 1
        if kind not in self.quiet_kinds and self._counts[kind] <= self.max_printed:
            print(f"warning: {problem.where}: {problem.detail}; skipped", file=sys.stderr)

    def counts(self) -> dict[str, int]:
        return dict(self._counts)

    def summary(self) -> str:
        """One line: how many problems of each kind."""
        counts = self.counts()
        if not counts:
            return "no problems found"
        return "problems: " + ", ".join(f"{n} {kind}" for kind, n in sorted(counts.items()))

    def write(self, path: Path) -> None:
        """The full list, as JSON, e.g. into the run folder."""
        data = {"counts": self.counts(), "problems": [p.__dict__ for p in self.items]}
        path.write_text(json.dumps(data, indent=2) + "\n")
