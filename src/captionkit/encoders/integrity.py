"""Integrity of feature stores: checked on every open, verified and repaired on request.

A store's `index.json` records the store format version, the byte size of each array file and a
CRC-32 of every block of `BLOCK_ROWS` rows of each array. Opening a store compares the version and
the file sizes (a `stat` per file, cheap): a truncated store, or one written by another version of
captionkit, is a `DamagedStore`, which `extract_features` deletes and builds again. Bytes changed
inside a file keep its size; `damaged_rows` finds them by recomputing the block checksums (it reads
the whole store), and `encoders.verify` re-extracts the rows of the blocks that differ.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np

from captionkit.errors import CaptionkitError

FORMAT_VERSION = 2
"""Version of the store layout; 1 was the layout before sizes and checksums were recorded."""
BLOCK_ROWS = 64
"""Rows per checksummed block: a damaged byte costs the re-extraction of at most this many."""
ARRAYS = ("pooled", "grid")


class DamagedStore(CaptionkitError):
    """A store that must not be read: truncated, of another format, or with wrong checksums."""


def block_checksums(array: np.ndarray) -> list[int]:
    """CRC-32 of the bytes of each block of `BLOCK_ROWS` rows of `array`."""
    return [
        zlib.crc32(np.ascontiguousarray(array[i : i + BLOCK_ROWS]).tobytes())
        for i in range(0, len(array), BLOCK_ROWS)
    ]


def integrity_record(folder: Path, arrays: dict[str, np.ndarray]) -> dict:
    """What `index.json` keeps to check the store at `folder` (its arrays already flushed)."""
    return {
        "format_version": FORMAT_VERSION,
        "files": {f"{n}.npy": (folder / f"{n}.npy").stat().st_size for n in ARRAYS},
        "checksums": {"block_rows": BLOCK_ROWS, **{n: block_checksums(arrays[n]) for n in ARRAYS}},
    }


def check_store(folder: Path, index: dict) -> None:
    """Raise `DamagedStore` when the store's format is another one or a file's size differs from
    the one recorded: the checks every open makes."""
    version = index.get("format_version", 1)
    if version != FORMAT_VERSION:
        raise DamagedStore(
            f"{folder}: feature store of format {version}, written by another version of "
            f"captionkit (this one reads format {FORMAT_VERSION})"
        )
    for name, size in index["files"].items():
        try:
            actual = (folder / name).stat().st_size
        except FileNotFoundError:
            raise DamagedStore(f"{folder / name}: missing from its feature store") from None
        if actual != size:
            raise DamagedStore(
                f"{folder / name}: {actual} bytes instead of {size} (truncated or overwritten)"
            )


def damaged_rows(index: dict, arrays: dict[str, np.ndarray]) -> list[int]:
    """Rows of the blocks whose checksum differs from the one recorded, in any array."""
    recorded = index["checksums"]
    block = recorded["block_rows"]
    bad: set[int] = set()
    for name in ARRAYS:
        now = block_checksums(arrays[name])
        bad |= {i for i, (a, b) in enumerate(zip(now, recorded[name])) if a != b}
    n = len(arrays["pooled"])
    return [row for b in sorted(bad) for row in range(b * block, min((b + 1) * block, n))]
