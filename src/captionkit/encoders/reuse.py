"""Incremental feature stores: rows of unchanged images are copied from older stores.

Every store's `index.json` records each image's `[size, mtime_ns]` (`null` when the file could not
be stat'ed) and the store's variant (encoder fingerprint: name, weights, preprocessing; grid
setting; autocast). A new store takes a row from an older store of the same variant only when the
image's resolved path and stat are the same in both, so only new or changed images go through the
encoder. Once a new store is complete, older ones of its variant whose every image it holds with
the same stat are superseded and deleted, so the cache does not grow with each edit of a dataset.
"""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from captionkit.encoders.integrity import check_store
from captionkit.errors import CaptionkitError

Stat = tuple[int, int] | None
"""(size, mtime_ns) of an image file; None when it could not be stat'ed (missing)."""

COPY_CHUNK_BYTES = 64 << 20
"""Rows are copied between stores in chunks of about this size, so memory stays bounded."""


def file_stat(path: Path) -> Stat:
    """The stat a store records and compares for `path`."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


@dataclass
class StoredIndex:
    """A complete store of the same variant, as a new store reads it to copy rows."""

    folder: Path
    paths: list[str]
    """Resolved image paths, one per row."""
    stats: list[Stat]
    """The stat of each image when its row was written."""
    failed: dict[str, list[str]]
    """Image path -> [problem kind, detail] for images that could not be used."""

    def arrays(self) -> dict[str, np.ndarray]:
        """The store's feature arrays, memory-mapped read-only."""
        return {n: np.load(self.folder / f"{n}.npy", mmap_mode="r") for n in ("pooled", "grid")}


def store_folder_pattern(encoder_name: str) -> re.Pattern:
    """Names of complete stores of an encoder (not `.partial` or superseded folders)."""
    return re.compile(re.escape(encoder_name) + r"-[0-9a-f]{16}")


def append_failures(path: Path, failures: dict[str, list[str]]) -> None:
    """Add `failures` (image path -> [problem kind, detail]) to the failure log of a store being
    built: one JSON line, appended and flushed to disk. Each batch writes only its own failures:
    rewriting all of them after every batch took time in the square of their number (minutes
    for a COCO-sized dataset of unreadable images). The leading newline ends a line that a crash
    cut short, which `read_failures` then skips."""
    with open(path, "a", encoding="utf-8") as f:
        f.write("\n" + json.dumps(failures) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_failures(path: Path) -> dict[str, list[str]]:
    """The failures of a log written by `append_failures` (a file of one JSON object, as earlier
    versions wrote it, reads the same). A line cut short by a crash is skipped: the rows of its
    batch had not been marked done, so they are tried again."""
    if not path.is_file():
        return {}
    failed = {}
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:  # an empty line, or one cut short
            continue
        if isinstance(entry, dict):
            failed.update(entry)
    return failed


def complete_stores(cache_dir: Path, encoder_name: str, variant: str) -> list[StoredIndex]:
    """Complete stores in `cache_dir` of this variant (encoder fingerprint, grid setting, autocast;
    see `features.store_variant`), newest first. Stores written before the variant and per-image
    stats were recorded are never reused."""
    pattern = store_folder_pattern(encoder_name)
    found = []
    for folder in cache_dir.glob(f"{glob.escape(encoder_name)}-*"):
        if not pattern.fullmatch(folder.name):
            continue
        try:
            index_file = folder / "index.json"
            index, mtime = json.loads(index_file.read_text()), index_file.stat().st_mtime_ns
        except (OSError, ValueError):  # removed meanwhile, or not a store
            continue
        if index.get("variant") != variant or "stats" not in index:
            continue
        try:
            check_store(folder, index)  # never copy rows out of a truncated store
        except CaptionkitError:
            continue
        stats = [tuple(s) if s is not None else None for s in index["stats"]]
        found.append((mtime, StoredIndex(folder, index["paths"], stats, index["failed"])))
    return [store for _, store in sorted(found, key=lambda item: -item[0])]


def copy_unchanged(
    arrays: dict[str, np.ndarray],
    failed: dict[str, list[str]],
    failed_file: Path,
    paths: list[Path],
    stats: list[Stat],
    donors: list[StoredIndex],
) -> int:
    """Fill the rows not yet done (`arrays["progress"]`) of images that a donor store holds with
    the same stat: features are copied, recorded failures taken over (an unchanged file that could
    not be read is not tried again). Returns the number of rows filled."""
    done = arrays["progress"]
    wanted = {str(paths[i]): int(i) for i in np.flatnonzero(~done)}
    filled = 0
    for donor in donors:
        same = {  # image path -> its row in the donor, for images unchanged since the donor
            path: j
            for j, (path, stat) in enumerate(zip(donor.paths, donor.stats))
            if path in wanted and stats[wanted[path]] == stat
        }
        pairs = [(wanted[path], j) for path, j in same.items() if path not in donor.failed]
        failures = {path: donor.failed[path] for path in same if path in donor.failed}
        try:
            _copy_rows(arrays, donor.arrays(), pairs)  # [(row here, row in donor)]
        except (OSError, ValueError):  # the donor was removed meanwhile: extract those images
            continue
        failed.update(failures)
        if failures:
            append_failures(failed_file, failures)
        done[[wanted[path] for path in failures]] = True
        done.flush()
        for path in same:
            del wanted[path]
        filled += len(same)
    return filled


def _copy_rows(arrays: dict[str, np.ndarray], source: dict[str, np.ndarray], pairs: list) -> None:
    if not pairs:
        return
    grid = arrays["grid"].shape[0] > 0
    if source["pooled"].shape[1:] != arrays["pooled"].shape[1:] or (
        grid and source["grid"].shape[1:] != arrays["grid"].shape[1:]
    ):
        raise ValueError("feature shapes differ")  # cannot happen for one fingerprint; be safe
    pairs = sorted(pairs, key=lambda pair: pair[1])  # read the donor front to back
    row_bytes = arrays["pooled"][0].nbytes + (arrays["grid"][0].nbytes if grid else 0)
    step = max(1, COPY_CHUNK_BYTES // row_bytes)
    for start in range(0, len(pairs), step):
        dst, src = np.asarray(pairs[start : start + step]).T  # [chunk] each
        arrays["pooled"][dst] = source["pooled"][src]
        if grid:
            arrays["grid"][dst] = source["grid"][src]
        # Features first, then the done-mask, as for extracted rows: a crash in between only
        # makes the next attempt copy this chunk again.
        arrays["pooled"].flush(), arrays["grid"].flush()
        arrays["progress"][dst] = True
        arrays["progress"].flush()


def donor_grid_length(donors: list[StoredIndex]) -> int | None:
    """Tokens per image in the donors' grids (they all agree), or None without a usable donor."""
    for donor in donors:
        try:
            return int(donor.arrays()["grid"].shape[1])
        except (OSError, ValueError, IndexError):
            continue
    return None


def remove_superseded(
    folder: Path, paths: list[str], stats: list[Stat], others: list[StoredIndex]
) -> list[str]:
    """Delete the stores among `others` whose every image the store at `folder` holds with the
    same stat; returns their folder names. A store is first renamed (atomic), so a process that
    looks it up in the meantime either opens it whole or does not find it."""
    here = dict(zip(paths, stats))
    removed = []
    for other in others:
        if other.folder == folder:
            continue
        if all(p in here and here[p] == s for p, s in zip(other.paths, other.stats)):
            trash = other.folder.with_name(f"{other.folder.name}.superseded-{os.getpid()}")
            try:
                os.replace(other.folder, trash)
            except OSError:  # removed by another process meanwhile
                continue
            shutil.rmtree(trash, ignore_errors=True)
            removed.append(other.folder.name)
    return removed
