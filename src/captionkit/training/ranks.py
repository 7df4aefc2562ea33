"""The processes of a DDP run watch each other: when one is gone (killed, out of memory, its machine
lost), the others stop within seconds with one error naming its rank, instead of waiting in their
next collective until its timeout (`train.ddp_timeout`).

At the start of training every rank learns each other rank's host and process id. A rank on the
same machine is gone when its process has ended; a rank on another machine when its heartbeat, a
counter it raises every `BEAT_S` in the run's rendezvous store, has not moved for `LOST_AFTER_S`.
A survivor's next collective usually fails at once (the dead peer's connections reset): `train`
then asks `RankWatch.lost_rank_error` which rank it was. When the collective blocks instead (a lost
machine resets nothing, NCCL waits), the watching thread ends the process after `STUCK_S`.

Lightning's own launcher of the local ranks (`--devices N`) watches its child processes too, but
kills the main process (SIGKILL) within 5 s of a child's death without a word of which rank died:
`WatchedDDP` launches them without that observer, and `RankWatch` watches them from the start.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import lightning as L
import torch.distributed as dist
from lightning.fabric.utilities.distributed import _set_num_threads_if_needed
from lightning.pytorch.strategies import DDPStrategy
from lightning.pytorch.strategies.launchers.subprocess_script import _SubprocessScriptLauncher

from captionkit.errors import CaptionkitError

BEAT_S = 1.0
"""Seconds between two checks of the other ranks (and two heartbeats)."""
LOST_AFTER_S = 20.0
"""A rank on another machine whose heartbeat has not moved for this long is lost."""
STUCK_S = 10.0
"""A rank is lost and this process has neither failed nor finished for this long: it waits in a
collective that will not return before its timeout, so the watching thread ends it."""


def _running(pid: int, child: subprocess.Popen | None = None) -> bool:
    """Whether process `pid` (of this machine) still runs; a child of this process is polled (which
    also reaps it), any other read from /proc, where an ended but unreaped one is a zombie."""
    if child is not None:
        return child.poll() is None
    if not Path("/proc/self/stat").exists():  # no /proc (macOS): whether the process exists
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def _how(child: subprocess.Popen | None) -> str:
    code = None if child is None else child.returncode
    if code is None:
        return "its process ended"
    if code < 0:
        name = signal.Signals(-code).name
        oom = ", as the kernel does when memory runs out" if name == "SIGKILL" else ""
        return f"killed by {name}{oom}"
    return f"exit code {code}"


class Liveness:
    """Which other ranks of a DDP run are gone, as rank `rank` sees them. `peers`: rank -> (host,
    pid), this rank's included; `children`: rank -> process, for the ranks this process started;
    `store`: the rendezvous store (None: no heartbeats, ranks on other machines are never lost)."""

    def __init__(
        self,
        rank: int,
        peers: dict[int, tuple[str, int]],
        store=None,
        children: dict[int, subprocess.Popen] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.rank, self.peers, self.store, self.clock = rank, peers, store, clock
        self.children = children or {}
        host = peers[rank][0]
        self.remote = [r for r, (h, _) in peers.items() if h != host]
        # rank -> (its heartbeat count, when that count was first seen)
        self.beats: dict[int, tuple[int | None, float]] = {r: (None, clock()) for r in self.remote}

    def beat(self) -> None:
        """Raise this rank's heartbeat and read the others'. A store that does not answer gives
        no news: after `LOST_AFTER_S` of that, the ranks on other machines are lost."""
        if self.store is None:
            return
        try:
            self.store.add(f"captionkit/beat/{self.rank}", 1)
            counts = {r: self.store.add(f"captionkit/beat/{r}", 0) for r in self.remote}
        except (RuntimeError, OSError):  # torch's store errors are RuntimeErrors
            return
        for r, count in counts.items():
            if count != self.beats[r][0]:
                self.beats[r] = (count, self.clock())

    def lost(self) -> dict[int, str]:
        """Rank -> how it was lost, for every other rank that is gone."""
        lost, now = {}, self.clock()
        for r, (_, pid) in self.peers.items():
            if r == self.rank:
                continue
            if r not in self.remote:
                child = self.children.get(r)
                if not _running(pid, child):
                    lost[r] = _how(child)
            elif self.store is not None and now - self.beats[r][1] > LOST_AFTER_S:
                lost[r] = f"no heartbeat for {LOST_AFTER_S:.0f} s"
        return lost

    def message(self, lost: dict[int, str], step: int, run_dir: Path) -> str:
        """The error of run `run_dir` that lost the ranks `lost` at optimizer step `step`."""
        ranks = "; ".join(
            f"rank {r} (process {self.peers[r][1]} on {self.peers[r][0]}): {how}"
            for r, how in sorted(lost.items())
        )
        return (
            f"the DDP run lost {ranks}; the other ranks stopped at step {step}. Continue "
            f"from the last checkpoint: captionkit train --resume {run_dir}"
        )


def _rendezvous_store():
    """A client of the run's rendezvous store (where torchrun, SLURM or Lightning's launcher
    pointed MASTER_ADDR and MASTER_PORT), or None when it cannot be reached."""
    try:
        return dist.TCPStore(
            os.environ["MASTER_ADDR"],
            int(os.environ["MASTER_PORT"]),
            is_master=False,
            timeout=timedelta(seconds=5),
        )
    except (KeyError, ValueError, RuntimeError):
        return None


class RankWatch(L.Callback):
    """Watches the other ranks of a DDP run (see the module's docstring); nothing in one process."""

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir
        self.liveness: Liveness | None = None
        self.step = 0
        self._done, self._failing = threading.Event(), threading.Event()

    def watch_children(self, rank: int, children: list[subprocess.Popen]) -> None:
        """From their start (`WatchedDDP`'s launcher), the ranks this process (rank `rank`)
        started: Lightning numbers them after it."""
        host = socket.gethostname()
        peers = {rank + i: (host, p.pid) for i, p in enumerate(children, 1)}
        self._start(
            Liveness(
                rank, {rank: (host, os.getpid()), **peers}, children=dict(zip(peers, children))
            )
        )

    def setup(self, trainer: L.Trainer, module: L.LightningModule, stage: str) -> None:
        if trainer.world_size < 2 or not dist.is_initialized():
            return
        gathered: list = [None] * trainer.world_size
        dist.all_gather_object(gathered, (socket.gethostname(), os.getpid()))
        peers = {r: tuple(p) for r, p in enumerate(gathered)}
        # Heartbeats only between machines: on one, the processes themselves are watched.
        one_machine = len({host for host, _ in peers.values()}) == 1
        store = None if one_machine else _rendezvous_store()
        children = self.liveness.children if self.liveness is not None else {}
        self._start(Liveness(trainer.global_rank, peers, store, children))

    def _start(self, liveness: Liveness) -> None:
        started, self.liveness = self.liveness is not None, liveness
        if not started:
            threading.Thread(target=self._watch, daemon=True, name="captionkit-rank-watch").start()

    def on_train_batch_end(self, trainer: L.Trainer, *args) -> None:
        self.step = trainer.global_step

    def on_train_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self.stop()  # the ranks leave one by one from here: a finished rank is no lost one

    def stop(self) -> None:
        self._done.set()

    def _watch(self) -> None:
        lost_since = None
        while not self._done.wait(BEAT_S):
            self.liveness.beat()
            lost = self.liveness.lost()
            if not lost or self._failing.is_set():
                lost_since = None
                continue
            lost_since = lost_since or time.monotonic()
            if time.monotonic() - lost_since > STUCK_S:
                error = self.liveness.message(lost, self.step, self.run_dir)
                print(f"error: {error}", file=sys.stderr, flush=True)
                os._exit(1)

    def lost_rank_error(self) -> CaptionkitError | None:
        """The error naming the lost ranks, when training failed because of them; the caller's
        exception otherwise (None). Waits up to `LOST_AFTER_S` for a machine's heartbeat."""
        if self.liveness is None or self._done.is_set():
            return None
        self._failing.set()
        # A process of this machine that broke the collective has ended already (or ends now);
        # one of another machine needs LOST_AFTER_S without a heartbeat.
        wait = (LOST_AFTER_S if self.liveness.remote else 0) + 2 * BEAT_S
        deadline = time.monotonic() + wait
        while not (lost := self.liveness.lost()) and time.monotonic() < deadline:
            time.sleep(BEAT_S)
        self._done.set()
        return (
            CaptionkitError(self.liveness.message(lost, self.step, self.run_dir)) if lost else None
        )


class _Launcher(_SubprocessScriptLauncher):
    """Lightning's launcher of a node's other ranks, less its observer thread (see the module's
    docstring): `watch` gets the processes it starts."""

    def __init__(self, watch: RankWatch, *args):
        super().__init__(*args)
        self.watch = watch

    def launch(self, function, *args, trainer=None, **kwargs):
        self.cluster_environment.validate_settings(
            num_devices=self.num_processes, num_nodes=self.num_nodes
        )
        if not self.cluster_environment.creates_processes_externally:
            self._call_children_scripts()
            rank = self.cluster_environment.node_rank() * self.num_processes  # local rank 0's
            self.watch.watch_children(rank, self.procs)
        _set_num_threads_if_needed(num_processes=self.num_processes)
        return function(*args, **kwargs)


class WatchedDDP(DDPStrategy):
    """Lightning's DDP, its collectives timing out after `timeout`, its local ranks watched by
    `watch` (a callback of the same trainer)."""

    def __init__(self, watch: RankWatch, timeout: timedelta):
        super().__init__(timeout=timeout)
        self.watch = watch

    def _configure_launcher(self) -> None:
        super()._configure_launcher()
        if isinstance(self._launcher, _SubprocessScriptLauncher):
            self._launcher = _Launcher(
                self.watch, self.cluster_environment, self.num_processes, self.num_nodes
            )
