"""The run folder of a training run: made ready for a new run, or checked for a resumed one."""

from __future__ import annotations

import fcntl
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from lightning.fabric.utilities.rank_zero import rank_zero_only

from captionkit.errors import CaptionkitError
from captionkit.training.config import RunConfig
from captionkit.training.resume_checkpoints import CHECKPOINTS, LAST

LOCK = ".train.lock"  # held (flock) by the process training into the folder

# Settings a resumed run may change: how long and on what it trains, not what it trains.
RESUMABLE_CHANGES = ("train", "optim", "scst")


def _flat(settings: dict, prefix: str = "") -> dict:
    """`{"optim": {"lr": 1}}` -> `{"optim.lr": 1}` (model_args stays one setting)."""
    flat = {}
    for key, value in settings.items():
        if isinstance(value, dict) and key != "model_args":
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return flat


def _resumed_config(config: RunConfig, run_dir: Path) -> None:
    """Check `config` against the run's own `config.yaml`: the model, data and encoder must be
    the same; changed training settings (e.g. more epochs) are listed and kept."""
    saved = _flat(RunConfig.from_yaml(run_dir / "config.yaml").to_dict())
    ours = _flat(config.to_dict())
    changed = [(name, saved[name], ours[name]) for name in saved if saved[name] != ours[name]]
    fixed = [c for c in changed if c[0].split(".")[0] not in RESUMABLE_CHANGES]
    if fixed:
        listed = ", ".join(f"{name} {old!r} there, {new!r} here" for name, old, new in fixed)
        raise CaptionkitError(f"--resume {run_dir}: other settings than the run's ({listed})")
    for name, old, new in changed:
        print(f"resuming with {name} {new!r} (was {old!r})")


def start_run_dir(config: RunConfig, run_dir: Path, resume: bool) -> Path:
    """The run folder made ready, and the checkpoint to resume from (checked to exist)."""
    last = run_dir / CHECKPOINTS / LAST
    if resume:
        if not (run_dir / "config.yaml").exists():
            raise CaptionkitError(f"--resume {run_dir}: not a run folder (no config.yaml)")
        if not last.exists():
            raise CaptionkitError(
                f"--resume {run_dir}: no {CHECKPOINTS}/{LAST} (the run stopped "
                "before its first checkpoint): train it again"
            )
        _resumed_config(config, run_dir)
        if rank_zero_only.rank == 0:  # what a crash during a save left behind
            for partial in last.parent.glob(".*.tmp-*"):
                partial.unlink()
    if rank_zero_only.rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        if not resume:
            (run_dir / "metrics.jsonl").unlink(missing_ok=True)
            last.unlink(missing_ok=True)  # a stale one must never be resumed into this run
        config.to_yaml(run_dir / "config.yaml")  # `train --config` of this file trains the run
    return last


@contextmanager
def run_folder_lock(run_dir: Path) -> Iterator[None]:
    """Hold `run_dir` for this training process: a second `train` into the same folder fails at
    once, naming the process that holds it, instead of mixing two runs' files. The lock is the
    kernel's (flock): it goes with the process, also when the process is killed."""
    if rank_zero_only.rank != 0:  # the other ranks of a DDP run belong to rank 0's run
        yield
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / LOCK, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            raise CaptionkitError(
                f"{run_dir}: another training run ({holder}) is writing into this folder: "
                "wait for it to end, or give another --out"
            ) from None
        f.seek(0)
        f.truncate()
        f.write(f"process {os.getpid()} on {socket.gethostname()}\n")
        f.flush()
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
