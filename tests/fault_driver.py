"""`python fault_driver.py ARGS...` runs `captionkit ARGS...` with the fault named by
`$CAPTIONKIT_FAULT` (tests/conftest.py `start_captionkit`):

- "SIGNAL step RANK N": the process of DDP rank RANK (0 alone) sends itself SIGNAL (KILL, TERM,
  USR1) as optimizer step N starts;
- "KILL save N": the N-th training-state file is cut in half as it is written, then SIGKILL;
- "SIGNAL forward N": feature extraction's N-th encoder forward pass (the grid-size probe is the
  first) starts with SIGNAL (KILL, or STOP: the process waits for a SIGCONT).

Before a signal it prints "fault: SIGNAL at TIME" (`time.time()`).

A script file, not `python -c`: Lightning starts the other ranks of a DDP run by running this
same file again (with the same environment, so the fault too).
"""

import os
import signal
import time

import safetensors.torch

import captionkit.training.resume_checkpoints as checkpoints
from captionkit.cli import entry_point
from captionkit.encoders import ImageEncoder
from captionkit.training.module import CaptioningModule


def fault(signum: int) -> None:
    print(f"fault: {signal.Signals(signum).name} at {time.time()}", flush=True)
    os.kill(os.getpid(), signum)


def at_step(signum: int, rank: int, step: int) -> None:
    before = CaptioningModule.on_train_batch_start

    def on_train_batch_start(self, batch, batch_idx):
        if self.global_step == step and self.global_rank == rank:
            fault(signum)
        before(self, batch, batch_idx)

    CaptioningModule.on_train_batch_start = on_train_batch_start


def at_save(n: int) -> None:
    saves = []

    def save_file(tensors, filename, metadata=None):
        saves.append(filename)
        safetensors.torch.save_file(tensors, filename, metadata)
        if len(saves) == n:
            os.truncate(filename, os.path.getsize(filename) // 2)
            fault(signal.SIGKILL)

    checkpoints.save_file = save_file


def at_forward(signum: int, n: int) -> None:
    forward, calls = ImageEncoder.forward, []

    def counting(self, images):
        calls.append(len(images))
        if len(calls) == n:
            fault(signum)
        return forward(self, images)

    ImageEncoder.forward = counting


if __name__ == "__main__":
    name, where, *numbers = os.environ["CAPTIONKIT_FAULT"].split()
    signum = getattr(signal, f"SIG{name}")
    if where == "step":
        at_step(signum, *map(int, numbers))
    elif where == "save":
        at_save(int(numbers[0]))
    else:
        at_forward(signum, int(numbers[0]))
    entry_point()
