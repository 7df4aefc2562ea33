"""Pre-emption: a cluster stops a job with SIGTERM (SLURM and Kubernetes send it some seconds before
SIGKILL), or, under SLURM, warns with SIGUSR1 ahead of the time limit when the job asks for it
(`#SBATCH --signal=USR1@90`, Lightning's requeue signal).

Training then saves `checkpoints/last.safetensors` at the end of the step under way and stops with
`Preempted`, whose exit code is 128 + the signal's number (143 for SIGTERM), what a shell reports
for a process the signal ended: a scheduler sees the job stopped by its signal, not crashed. The
message says how to go on (`captionkit train --resume RUN`). On SIGUSR1 under SLURM, rank 0 first
requeues the job (`scontrol requeue`, as Lightning's auto-requeue does): its script, run again,
resumes. The resumed run ends with the weights of an uninterrupted one (tests/test_resume.py).

The handlers replace Lightning's for the training loop (Lightning's would stop without saving, and
exit with code 0). In DDP the signal may reach one rank only, or the ranks at different steps: after
every step they all-reduce what each received, so that all save the same step and stop together.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
from pathlib import Path

import lightning as L
import torch
import torch.distributed as dist
from lightning.fabric.plugins.environments import SLURMEnvironment

from captionkit.errors import CaptionkitError
from captionkit.training.callbacks import LastCheckpoint


class Preempted(CaptionkitError):
    """Training stopped on a scheduler's signal; `exit_code` is the CLI's."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum


def _slurm_job() -> str | None:
    """The SLURM job to requeue (an array job's task: JOB_TASK), None outside a SLURM job."""
    array = os.environ.get("SLURM_ARRAY_JOB_ID")
    if array is not None:
        return f"{array}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    return os.environ.get("SLURM_JOB_ID")


def _requeue(job: str) -> str:
    """Requeue SLURM job `job`; what happened, for the message."""
    try:
        done = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True)
    except FileNotFoundError:
        return f"could not requeue SLURM job {job} (no scontrol on PATH): submit it again"
    if done.returncode != 0:
        return f"could not requeue SLURM job {job} ({done.stderr.strip()}): submit it again"
    return f"requeued SLURM job {job}"


class Preemption(L.Callback):
    """Saves through `last` and stops training when the job is pre-empted (module docstring)."""

    def __init__(self, last: LastCheckpoint, run_dir: Path, accumulate: int):
        self.last, self.run_dir, self.accumulate = last, run_dir, accumulate
        self.received = 0  # the first signal received (its number), 0: none
        self.requeue = SLURMEnvironment.detect() and _slurm_job() is not None

    def _note(self, signum: int, frame) -> None:
        # Only a flag: a handler runs between two Python instructions, mid-step.
        self.received = self.received or signum

    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        if trainer.received_sigterm:  # caught by Lightning's handler, before ours replace it
            self.received = signal.SIGTERM
        # After Lightning's, which it set up just before training; it restores the handlers of
        # before training when it ends.
        signal.signal(signal.SIGTERM, self._note)
        if self.requeue:
            signal.signal(signal.SIGUSR1, self._note)

    def _agreed(self, trainer: L.Trainer) -> int:
        """The signal any rank received (the largest number), the same on every rank."""
        if trainer.world_size == 1:
            return self.received
        received = torch.tensor([self.received], device=trainer.strategy.root_device)
        dist.all_reduce(received, op=dist.ReduceOp.MAX)
        return int(received.item())

    def on_train_batch_end(self, trainer: L.Trainer, *args) -> None:
        if (args[-1] + 1) % self.accumulate:  # never in the middle of a gradient accumulation
            return
        signum = self._agreed(trainer)
        if not signum:
            return
        if self.last.saved_step != trainer.global_step:  # not saved yet at this step
            self.last.save(trainer)
        step, name = trainer.global_step, signal.Signals(signum).name
        resume = f"captionkit train --resume {self.run_dir}"
        then = f"continue with: {resume}"
        if signum == signal.SIGUSR1 and self.requeue:
            requeued = _requeue(_slurm_job()) if trainer.is_global_zero else "rank 0 requeues it"
            then = f"{requeued}; its script must then run: {resume}"
        raise Preempted(
            f"pre-empted ({name}) at step {step}: saved {self.last.path}; {then}", signum
        )
