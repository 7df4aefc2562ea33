"""How the processes of a DDP run find a lost one (`training.ranks`), without training: a process
of this machine that ended (reaped or not), a rank of another machine whose heartbeat stopped;
and the collective timeout the DDP strategy gets."""

import os
import socket
import subprocess
import sys
import time
from datetime import timedelta

import pytest
import torch.distributed as dist

from captionkit.training import ranks
from captionkit.training.config import RunConfig, TrainConfig
from captionkit.training.ranks import Liveness, RankWatch, WatchedDDP
from captionkit.training.train import _trainer

from conftest import process_state


@pytest.fixture
def peer():
    """A process of this machine, as another rank's."""
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    yield process
    process.kill()
    process.wait()


def test_a_rank_of_this_machine_is_lost_once_its_process_ended(peer, tmp_path):
    host = socket.gethostname()
    peers = {0: (host, os.getpid()), 1: (host, peer.pid)}
    seen_by_another = Liveness(0, peers)  # as a rank that did not start it sees it: /proc
    started_it = Liveness(0, peers, children={1: peer})
    assert seen_by_another.lost() == started_it.lost() == {}
    peer.kill()
    deadline = time.monotonic() + 30
    while seen_by_another.lost() == {} and time.monotonic() < deadline:  # the kill lands
        time.sleep(0.05)
    # Not reaped yet (a zombie): ended all the same.
    assert process_state(peer.pid) == "Z" and seen_by_another.lost() == {1: "its process ended"}
    how = "killed by SIGKILL, as the kernel does when memory runs out"
    assert started_it.lost() == {1: how}
    message = started_it.message(started_it.lost(), 9, tmp_path)
    assert message == (f"the DDP run lost rank 1 (process {peer.pid} on {host}): {how}; the "
                       f"other ranks stopped at step 9. Continue from the last checkpoint: "
                       f"captionkit train --resume {tmp_path}")  # fmt: skip


def test_a_rank_of_another_machine_is_lost_when_its_heartbeat_stops():
    store = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False,
                          timeout=timedelta(seconds=5))  # fmt: skip
    now = [0.0]
    peers = {0: ("node-a", 100), 1: ("node-b", 200)}
    mine, theirs = (Liveness(r, peers, store, clock=lambda: now[0]) for r in (0, 1))
    for _ in range(30):  # both beat: nobody lost, however long it runs
        now[0] += ranks.BEAT_S
        mine.beat(), theirs.beat()
        assert mine.lost() == theirs.lost() == {}
    while now[0] < 30 + ranks.LOST_AFTER_S:  # node-b's process is gone
        now[0] += ranks.BEAT_S
        mine.beat()
        assert mine.lost() == {}
    now[0] += 2 * ranks.BEAT_S
    mine.beat()
    assert mine.lost() == {1: f"no heartbeat for {ranks.LOST_AFTER_S:.0f} s"}
    assert Liveness(0, peers, store=None).lost() == {}  # no store, no heartbeats: never lost


def test_ddp_collectives_time_out_after_the_configured_seconds(tmp_path):
    config = RunConfig(train=TrainConfig(strategy="ddp", accelerator="cpu", ddp_timeout=45))
    trainer = _trainer(config, tmp_path, [])
    assert isinstance(trainer.strategy, WatchedDDP)
    assert trainer.strategy._timeout == timedelta(seconds=45)
    assert any(isinstance(c, RankWatch) for c in trainer.callbacks)
    assert TrainConfig().ddp_timeout == 600  # not Lightning's 30 minutes
