"""The feature store: encoder outputs for every image, extracted once and cached on disk.

A store is a folder `<cache_dir>/<encoder>-<key>/` holding `pooled.npy` `[N, D]` and `grid.npy`
`[N, L, D]` (float16, memory-mapped when read) and `index.json` (image paths in row order, each
image's size and mtime, the images that could not be read, the encoder). The key hashes the
encoder's fingerprint (name, weights, preprocessing), the grid setting and every image's path,
size and mtime, so another encoder or a changed image never reads stale features. Building a store
copies the rows of unchanged images from older stores of the same encoder (`reuse.py`), so only
new or changed images go through the encoder. The folder is written under a temporary name and
renamed when complete, so an interrupted extraction never leaves a store that is later trusted.
Its array files get all their disk blocks before the first image is extracted: on a full disk the
build stops at once with an error, where writing into a memory map with no disk behind it would
kill the process (SIGBUS) hours later.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import hashlib
import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from captionkit.data.files import write_json_atomically
from captionkit.data.image_files import open_or_problem
from captionkit.data.problems import Problems
from captionkit.encoders import reuse
from captionkit.encoders.extraction import ExtractionSettings, extraction_settings, precision
from captionkit.encoders.factory import ImageEncoder
from captionkit.encoders.integrity import DamagedStore, check_store, integrity_record
from captionkit.encoders.reuse import Stat, append_failures, file_stat
from captionkit.encoders.views import View
from captionkit.errors import CaptionkitError

log = logging.getLogger(__name__)


def default_cache_dir() -> Path:
    """`$CAPTIONKIT_CACHE`, else `~/.cache/captionkit`."""
    return Path(os.environ.get("CAPTIONKIT_CACHE", Path.home() / ".cache" / "captionkit"))


class ImageFiles(Dataset):
    """Decoded, preprocessed images; an unreadable file yields its error message instead."""

    def __init__(self, paths: list[Path], transform, seeded: bool = False):
        self.paths, self.transform, self.seeded = paths, transform, seeded

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor | None, list[str] | None]:
        """(index, pixels, None) or (index, None, [problem kind, detail])."""
        image, problem = open_or_problem(self.paths[i])
        if image is None:
            return i, None, problem
        # A view's transform is seeded by the image (`views.SeededTransform`).
        pixels = self.transform(image, self.paths[i]) if self.seeded else self.transform(image)
        return i, pixels, None


def _collate(items):
    ok = [(i, x) for i, x, _ in items if x is not None]
    failed = [(i, err) for i, x, err in items if x is None]
    images = torch.stack([x for _, x in ok]) if ok else None
    return [i for i, _ in ok], images, failed


@dataclass
class BuildReport:
    """How `extract_features` filled a store it had to build (a cache hit has none)."""

    reused: int
    """Rows copied from older stores of the same encoder: images unchanged since then."""
    extracted: int
    """Images decoded and run through the encoder (or found unreadable) by this call."""
    resumed: int = 0
    """Rows already done by an interrupted earlier attempt at the same store."""
    removed: list[str] = field(default_factory=list)
    """Older stores deleted because the new one holds all their images, unchanged."""

    def summary(self) -> str:
        """One line for logs and the CLI."""
        text = (
            f"reused {self.reused} unchanged images from older stores, extracted {self.extracted}"
        )
        if self.resumed:
            text += f", {self.resumed} done by an interrupted earlier run"
        if self.removed:
            text += f"; removed {len(self.removed)} superseded stores"
        return text


@dataclass
class FeatureStore:
    """Cached features of a set of images; rows follow `paths`."""

    folder: Path
    paths: list[str]
    pooled: np.ndarray
    grid: np.ndarray | None
    failed: dict[str, list[str]] = field(default_factory=dict)
    """Image path -> [problem kind, detail] for images that could not be used."""
    report: BuildReport | None = None
    """Set when this call built the store; None when it came whole from the cache."""

    def __post_init__(self):
        self.row = {p: i for i, p in enumerate(self.paths)}

    def has(self, path: Path | str) -> bool:
        """True when the image was read and its features are in the store."""
        key = str(Path(path).resolve())
        return key in self.row and key not in self.failed

    def rows(self, paths: list[Path]) -> list[int]:
        """Row numbers of image files (as given to `extract_features`, in any relative form)."""
        return [self.row[str(Path(p).resolve())] for p in paths]

    @classmethod
    def open(cls, folder: Path) -> FeatureStore:
        """The complete store at `folder`; `DamagedStore` if it is truncated or of another
        format (`integrity.check_store`), FileNotFoundError if there is none."""
        index = json.loads((folder / "index.json").read_text())
        check_store(folder, index)
        grid = np.load(folder / "grid.npy", mmap_mode="r") if index["grid"] else None
        pooled = np.load(folder / "pooled.npy", mmap_mode="r")
        return cls(folder, index["paths"], pooled, grid, index["failed"])


def store_variant(
    encoder: ImageEncoder, grid: bool, amp: str | None = None, view: View | None = None
) -> str:
    """What makes rows of two stores interchangeable: the encoder fingerprint (name, weights,
    preprocessing), the grid setting, autocast and the augmented view. Autocast changes features
    by more than the float16 storage rounds (bf16: a few percent, see tests/test_feature_store.py),
    so its stores are kept apart from float32 ones."""
    variant = f"{encoder.fingerprint()}|grid={grid}"
    variant = variant if amp is None else f"{variant}|amp={amp}"
    return variant if view is None else f"{variant}|{view.key()}"


def store_key(
    encoder: ImageEncoder,
    paths: list[Path],
    grid: bool,
    stats: list[Stat] | None = None,
    amp: str | None = None,
    view: View | None = None,
) -> str:
    """Hash of the store variant and each image's path, size and mtime."""
    stats = stats if stats is not None else [file_stat(p) for p in paths]
    h = hashlib.sha256(store_variant(encoder, grid, amp, view).encode())
    for p, stat in zip(paths, stats):
        h.update(
            f"{p}|missing\n".encode() if stat is None else f"{p}|{stat[0]}|{stat[1]}\n".encode()
        )
    return h.hexdigest()[:16]


def extract_features(
    encoder: ImageEncoder,
    paths: list[Path],
    cache_dir: Path | None = None,
    grid: bool = True,
    batch_size: int = 32,
    num_workers: int = 1,
    *,
    device: str = "auto",
    amp: str | None = None,
    view: View | None = None,
    prune: bool = True,
) -> FeatureStore:
    """Features of `paths`, from the cache when it holds them, else built and cached.

    Building copies the rows of unchanged images from older stores of the same variant (encoder,
    grid setting, `amp`) and runs only the rest through the encoder, on `device` ("auto": CUDA
    when available), in float32 or with autocast when `amp` is "bf16" or "fp16" (fp16: CUDA only).
    Float32 stores serve any device: CPU and CUDA agree far below the float16 storage rounding.
    Rows are written into `<store>.partial/` and marked done after every batch, so an
    interrupted build resumes where it stopped; the folder gets its final name only when complete.
    With `view`, the features are those of that augmented view of each image (`views.View`).
    A lock file keeps two processes from building the same store at once. With `prune`, older
    stores that the new one supersedes are deleted. `store.report` says what was done."""
    settings = extraction_settings(batch_size, num_workers, device, amp, view)
    paths = [Path(p).resolve() for p in paths]
    stats = [file_stat(p) for p in paths]
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    variant = store_variant(encoder, grid, amp, view)
    folder = store_folder(encoder, paths, cache_dir, grid, stats, amp, view)
    store = _open_complete(folder)
    if store is not None:
        return store
    partial = folder.with_name(f"{folder.name}.partial")
    try:
        partial.mkdir(parents=True, exist_ok=True)
        report = None
        with open(partial / "lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also on a crash
            if _open_complete(folder) is None:  # another process may have finished meanwhile
                report = _build(folder, encoder, paths, stats, grid, settings)
    except OSError as e:  # a full disk, a quota, a read-only cache
        raise CaptionkitError(_write_error(partial, e, len(paths), encoder, grid)) from None
    (folder / "lock").unlink(missing_ok=True)
    if report is not None and prune:
        others = reuse.complete_stores(cache_dir, encoder.name, variant)
        report.removed = reuse.remove_superseded(folder, [str(p) for p in paths], stats, others)
    if report is not None:
        log.info("%s: %s", folder.name, report.summary())
    store = FeatureStore.open(folder)
    store.report = report
    return store


def _write_error(partial: Path, error: OSError, n: int, encoder: ImageEncoder, grid: bool) -> str:
    """What a build that failed on `error` left and what to do (`n` images)."""
    problem = error.strerror or str(error)
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        tokens = 1 + (_grid_length(encoder) if grid else 0)  # pooled row + grid rows, float16
        size = n * tokens * encoder.feature_dim * 2
        free = shutil.disk_usage(partial.parent).free
        problem += f": the store takes {_in_words(size)}, {_in_words(free)} are free"
    return (
        f"{partial}: could not write the feature store ({problem}); no store was completed. "
        "Make room and run again: it goes on from the images done"
    )


def _in_words(size: int) -> str:
    return f"{size / 1e9:.1f} GB" if size >= 1e9 else f"{size / 1e6:.1f} MB"


def store_folder(
    encoder: ImageEncoder,
    paths: list[Path],
    cache_dir: Path,
    grid: bool,
    stats: list[Stat],
    amp: str | None,
    view: View | None,
) -> Path:
    """Where the store of these images (their `stats`) and settings lies in `cache_dir`."""
    return cache_dir / f"{encoder.name}-{store_key(encoder, paths, grid, stats, amp, view)}"


def cached_store(
    encoder: ImageEncoder,
    paths: list[Path],
    cache_dir: Path | None = None,
    grid: bool = True,
    amp: str | None = None,
) -> FeatureStore | None:
    """The complete, intact store of `paths` that `extract_features` would return, when the
    cache already has it (else None; nothing is built or removed)."""
    paths = [Path(p).resolve() for p in paths]
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    folder = store_folder(encoder, paths, cache_dir, grid, [file_stat(p) for p in paths], amp, None)
    try:
        return FeatureStore.open(folder)
    except (FileNotFoundError, DamagedStore):  # none, or damaged: a build deals with it
        return None


def _open_complete(folder: Path) -> FeatureStore | None:
    """The store at `folder`, or None when it must be built: missing, or damaged (then removed,
    with a warning: it is never read as features)."""
    try:
        return FeatureStore.open(folder)
    except FileNotFoundError:  # not built yet, or just removed as superseded by another build
        return None
    except DamagedStore as e:
        log.warning("%s: building the store again", e)
        trash = folder.with_name(f"{folder.name}.damaged-{os.getpid()}")
        with contextlib.suppress(OSError):  # another process may have moved it first
            os.replace(folder, trash)
        shutil.rmtree(trash, ignore_errors=True)
        return None


def _build(
    folder: Path,
    encoder: ImageEncoder,
    paths: list[Path],
    stats: list[Stat],
    grid: bool,
    settings: ExtractionSettings,
) -> BuildReport:
    """Fill `<folder>.partial` (copy, then extract the rest), write its index, rename it."""
    partial = folder.with_name(f"{folder.name}.partial")
    variant = store_variant(encoder, grid, settings.amp, settings.view)
    donors = reuse.complete_stores(folder.parent, encoder.name, variant)
    n_tokens = reuse.donor_grid_length(donors) or _grid_length(encoder)
    arrays = open_partial_arrays(partial, len(paths), n_tokens, encoder.feature_dim, grid)
    failed_file = partial / "failed.json"
    failed = reuse.read_failures(failed_file)
    resumed = int(arrays["progress"].sum())
    reused = reuse.copy_unchanged(arrays, failed, failed_file, paths, stats, donors)
    extracted = extract_into(arrays, failed, failed_file, encoder, paths, settings)
    index = store_index(encoder, paths, stats, grid, failed, settings.amp, settings.view)
    finish_store(folder, arrays, index)
    return BuildReport(reused, extracted, resumed)


def store_index(
    encoder: ImageEncoder,
    paths: list[Path],
    stats: list[Stat],
    grid: bool,
    failed: dict,
    amp: str | None = None,
    view: View | None = None,
) -> dict:
    """What a store's index.json says of it, less the integrity record (`finish_store`)."""
    index = {"paths": [str(p) for p in paths], "stats": stats, "grid": grid, "failed": failed}
    index |= {"encoder": encoder.spec(), "variant": store_variant(encoder, grid, amp, view)}
    return index | {"amp": amp, "view": dataclasses.asdict(view) if view else None}


def finish_store(folder: Path, arrays: dict, index: dict) -> None:
    """Complete the store built in `<folder>.partial` (its `open_partial_arrays`, all rows
    filled): the index with its integrity record written, the build's own files removed, the
    folder renamed to `folder`, which readers then find whole."""
    partial = folder.with_name(f"{folder.name}.partial")
    seal_store(partial, arrays, index)
    shutil.rmtree(folder, ignore_errors=True)  # an incomplete store left by hand
    os.replace(partial, folder)


def seal_store(folder: Path, arrays: dict, index: dict) -> None:
    """Write `index` with the integrity record of `arrays` as `folder`'s index.json and remove
    the files of the build or repair (`progress.npy`, `failed.json`)."""
    write_json_atomically(folder / "index.json", index | integrity_record(folder, arrays))
    (folder / "progress.npy").unlink()
    (folder / "failed.json").unlink(missing_ok=True)


def _reserve(path: Path) -> None:
    """Give the (sparse) file `path` all its disk blocks now: OSError (ENOSPC) if the disk lacks
    them. Filesystems that cannot allocate ahead (some network ones) are left as they are."""
    if not hasattr(os, "posix_fallocate"):  # macOS
        return
    with open(path, "r+b") as f:
        try:
            os.posix_fallocate(f.fileno(), 0, os.fstat(f.fileno()).st_size)
        except OSError as e:
            if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                raise


def _reopen(path: Path, shape: tuple, dtype) -> tuple[np.ndarray, bool]:
    """A writable memory map of `path`: (array, True) if a previous attempt left a usable one."""
    try:
        array = np.load(path, mmap_mode="r+")
        if array.shape == shape and array.dtype == dtype:
            return array, True
    except (OSError, ValueError):  # missing or truncated
        pass
    return np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape), False


def open_partial_arrays(folder: Path, n: int, n_tokens: int, dim: int, grid: bool) -> dict:
    """The arrays of a store being built in `folder` (`<store folder>.partial`): pooled, grid
    and the done-mask `progress`, reopened when a previous attempt left them usable, else new
    (then everything restarts)."""
    specs = {
        "pooled": ((n, dim), np.float16),
        "grid": ((n if grid else 0, n_tokens, dim), np.float16),
        "progress": ((n,), np.bool_),
    }
    opened = {name: _reopen(folder / f"{name}.npy", *spec) for name, spec in specs.items()}
    for name in specs:  # also when reopened: an attempt that failed here left holes
        _reserve(folder / f"{name}.npy")
    arrays = {name: array for name, (array, _) in opened.items()}
    if not all(reused for _, reused in opened.values()):
        arrays["progress"][:] = False
        (folder / "failed.json").unlink(missing_ok=True)
    return arrays


@torch.inference_mode()
def extract_into(
    arrays: dict,
    failed: dict,
    failed_file: Path,
    encoder: ImageEncoder,
    paths: list[Path],
    settings: ExtractionSettings,
) -> int:
    """Run the images of the rows not yet done (`arrays["progress"]`) through the encoder into
    `arrays`, recording unreadable ones in `failed` (and `failed_file`); returns how many."""
    done = arrays["progress"]
    todo = np.flatnonzero(~done)
    if not len(todo):
        return 0
    home = next(encoder.parameters()).device
    encoder = encoder.to(settings.device)
    cuda = settings.device.type == "cuda"
    view = settings.view
    transform = encoder.transform() if view is None else view.transform(encoder)
    loader = DataLoader(
        ImageFiles([paths[i] for i in todo], transform, seeded=view is not None),
        batch_size=settings.batch_size,
        num_workers=settings.num_workers if len(todo) > settings.batch_size else 0,
        collate_fn=_collate,
        pin_memory=cuda,  # page-locked batches copy to the GPU asynchronously
    )
    try:
        for local_rows, images, errors in tqdm(
            loader, desc=f"features ({encoder.name})", unit="batch"
        ):
            new_failures = {str(paths[todo[i]]): err for i, err in errors}
            failed.update(new_failures)
            rows = todo[local_rows]
            if images is not None:
                images = images.to(settings.device, non_blocking=cuda)  # [B, 3, H, W]
                with precision(settings):
                    p, g = encoder(images)
                # float16 on the device: the store's dtype, and half the bytes to copy back
                arrays["pooled"][rows] = p.to(torch.float16).cpu().numpy()  # [B, D]
                if arrays["grid"].shape[0]:
                    arrays["grid"][rows] = g.to(torch.float16).cpu().numpy()  # [B, L, D]
            # Features first, then the failures, then the done-mask: a crash between two of these
            # writes only makes the next attempt redo this batch.
            arrays["pooled"].flush(), arrays["grid"].flush()
            if errors:
                append_failures(failed_file, new_failures)
            done[rows] = True
            done[[todo[i] for i, _ in errors]] = True
            done.flush()
    finally:
        encoder.to(home)
    return len(todo)


def _grid_length(encoder: ImageEncoder) -> int:
    size = encoder.data_config["input_size"]
    with torch.inference_mode():
        _, g = encoder(torch.zeros(1, *size, device=next(encoder.parameters()).device))
    return g.shape[1]


def features_for_dataset(
    dataset,
    encoder: ImageEncoder,
    cache_dir: Path | None = None,
    problems: Problems | None = None,
    **options,
):
    """Features of every image of a `CaptionDataset` (all splits, so training and evaluation share
    one store), and the records whose image could be read. Unusable images are reported into
    `problems` (default: the dataset's own collector) and skipped. `options` go to
    `extract_features` (`device`, `amp`, `batch_size`, ...)."""
    problems = problems if problems is not None else dataset.problems
    paths = [dataset.path(r) for r in dataset.records]
    store = extract_features(encoder, paths, cache_dir, **options)
    usable = []
    for record in dataset.records:
        path = dataset.path(record)
        if store.has(path):
            usable.append(record)
        else:
            kind, detail = store.failed[str(Path(path).resolve())]
            problems.add(kind, path, detail)
    if not usable:
        raise CaptionkitError(f"{dataset.image_root}: none of the dataset's images could be read")
    return store, usable
