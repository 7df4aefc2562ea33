"""`captionkit extract --verify`: find the rows of a feature store whose bytes changed on disk
(block checksums, see `integrity`) and extract just those again."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from captionkit.encoders.extraction import extraction_settings
from captionkit.encoders.factory import ImageEncoder
from captionkit.encoders.features import FeatureStore, extract_into, seal_store
from captionkit.encoders.integrity import damaged_rows
from captionkit.encoders.views import View


@dataclass
class VerifyReport:
    """What `verify_store` found and mended."""

    blocks: int
    """Blocks of rows checked."""
    block_rows: int
    """Rows per block (`integrity.BLOCK_ROWS` when the store was written)."""
    damaged_rows: list[int]
    """Rows of the blocks whose checksum differed, extracted again."""

    def summary(self) -> str:
        checked = f"verified {self.blocks} blocks of {self.block_rows} rows"
        if not self.damaged_rows:
            return f"{checked}: all intact"
        blocks = len({r // self.block_rows for r in self.damaged_rows})
        return f"{checked}: {blocks} damaged, {len(self.damaged_rows)} rows extracted again"


def verify_store(store: FeatureStore, encoder: ImageEncoder, **options) -> VerifyReport:
    """Recompute the checksums of `store` (made by `encoder`), extract the rows of damaged blocks
    again in place (with the store's own autocast and view) and record the new checksums.
    `options`: `batch_size`, `num_workers`, `device`, as `extraction_settings` takes them."""
    folder = store.folder
    index = json.loads((folder / "index.json").read_text())
    arrays = {n: np.load(folder / f"{n}.npy", mmap_mode="r+") for n in ("pooled", "grid")}
    rows = damaged_rows(index, arrays)
    checksums = index["checksums"]
    report = VerifyReport(len(checksums["pooled"]), checksums["block_rows"], rows)
    if not rows:
        return report
    progress = np.lib.format.open_memmap(
        folder / "progress.npy", mode="w+", dtype=np.bool_, shape=(len(store.paths),)
    )
    progress[:] = True
    progress[rows] = False  # extract_into redoes the rows not done
    arrays["progress"] = progress
    failed = dict(index["failed"])
    paths = [Path(p) for p in store.paths]
    view = View(**index["view"]) if index.get("view") else None
    settings = extraction_settings(amp=index.get("amp"), view=view, **options)
    extract_into(arrays, failed, folder / "failed.json", encoder, paths, settings)
    seal_store(folder, arrays, {**index, "failed": failed})
    return report
