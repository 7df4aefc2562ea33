"""The optimizer and its learning-rate schedule, as `OptimConfig` says, in Lightning's terms.

Every schedule but `plateau` is a closed formula of the optimizer step (`LrFactor`, run by a
`LambdaLR` each step). `plateau` cuts the learning rate when val CIDEr stalls, which no formula
knows in advance: torch's `ReduceLROnPlateau`, stepped after each validation, with the warmup
done by a `LinearLR` that multiplies the current learning rate by each step's ratio, so that a
cut made during the warmup is kept, and that leaves the learning rate alone once it is over.

Checkpoints: the schedulers' state dicts hold numbers and strings only (`LambdaLR` saves the
attributes of a callable object, where it would save nothing of a function), so Lightning's
checkpoints of a run save and resume its schedule, and load with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.optim.lr_scheduler import LambdaLR, LinearLR, ReduceLROnPlateau

from captionkit.training.config import OptimConfig

# `plateau` follows this metric, logged by `CaptioningModule.on_validation_epoch_end`.
PLATEAU_MONITOR = "val/CIDEr"


@dataclass
class LrFactor:
    """The learning-rate multiplier at each optimizer step (from 0) of every schedule but
    `plateau`: a callable object, not a closure, so that `LambdaLR` saves its fields."""

    schedule: str
    """`constant`, `cosine`, `step` or `noam` (see `OptimConfig.schedule`)."""
    warmup: int
    """Steps of linear warmup: the factor is (step + 1) / warmup during them."""
    total_steps: int = 0
    """`cosine`: the run's optimizer steps; the factor reaches 0 at the last."""
    step_every: int = 1
    """`step`: optimizer steps between two multiplications by `gamma`."""
    gamma: float = 1.0
    """`step`: the multiplier."""

    def __call__(self, step: int) -> float:
        warm = min(1.0, (step + 1) / self.warmup) if self.warmup > 0 else 1.0
        if self.schedule == "noam":
            # Vaswani et al.'s d^-0.5 * min(s^-0.5, s * w^-1.5), divided by its peak (at s = w).
            return min(warm, math.sqrt(self.warmup / (step + 1)))
        if self.schedule == "step":
            # As StepLR stepped every epoch; counted from the first step, warmup included.
            return warm * self.gamma ** (step // self.step_every)
        if step < self.warmup or self.schedule == "constant":
            return warm
        progress = (step - self.warmup) / max(self.total_steps - self.warmup, 1)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def needs_run_length(optim: OptimConfig) -> bool:
    """Whether the schedule needs the run's optimizer steps (Lightning loads the data to count
    them, which a run of another schedule can skip)."""
    return optim.schedule in ("cosine", "step")


def lr_factor(optim: OptimConfig, total_steps: int = 0, epochs: int = 1) -> LrFactor:
    """The multiplier of schedule `optim.schedule` (not `plateau`), for a run of `total_steps`
    optimizer steps over `epochs` epochs."""
    steps_per_epoch = max(1, total_steps // max(epochs, 1))
    return LrFactor(
        optim.schedule,
        optim.warmup_steps,
        total_steps,
        steps_per_epoch * optim.lr_step_epochs,
        optim.lr_gamma,
    )


def make_optimizer(
    optim: OptimConfig, groups: list[dict], loss_scaling: bool = False
) -> torch.optim.Optimizer:
    """Adam or AdamW over the parameter `groups` (a group's own `lr` wins over `optim.lr`),
    fused (one kernel over all parameters instead of a loop of small operations per parameter:
    on a CPU the loop took 5% of the attention decoder's training step) where all parameters
    are on a CPU or a CUDA device and no `loss_scaling` (16-mixed) is on: a fused optimizer
    unscales the gradients itself, after the clipping has read them."""
    kind = torch.optim.AdamW if optim.optimizer == "adamw" else torch.optim.Adam
    on_fused_devices = all(p.device.type in ("cpu", "cuda") for g in groups for p in g["params"])
    fused = on_fused_devices and not loss_scaling
    return kind(groups, lr=optim.lr, weight_decay=optim.weight_decay, fused=fused)


def make_schedulers(
    optim: OptimConfig, optimizer: torch.optim.Optimizer, total_steps: int = 0, epochs: int = 1
) -> list[dict]:
    """Lightning scheduler configs for `optimizer`: `total_steps` optimizer steps over `epochs`
    epochs (needed only where `needs_run_length`)."""
    if optim.schedule != "plateau":
        factor = lr_factor(optim, total_steps, epochs)
        return [{"scheduler": LambdaLR(optimizer, factor), "interval": "step"}]
    schedulers = []
    if optim.warmup_steps > 1:  # a warmup of 1 step is a factor of 1: none
        warmup = LinearLR(
            optimizer,
            start_factor=1 / optim.warmup_steps,
            end_factor=1.0,
            total_iters=optim.warmup_steps - 1,
        )
        schedulers.append({"scheduler": warmup, "interval": "step"})
    plateau = ReduceLROnPlateau(
        optimizer,
        mode="max",
        factor=optim.plateau_factor,
        patience=optim.plateau_patience,
        min_lr=optim.min_lr,
    )
    # Lightning steps an "epoch" scheduler after the epoch's validation, with the metric.
    schedulers.append({"scheduler": plateau, "interval": "epoch", "monitor": PLATEAU_MONITOR})
    return schedulers


def configure_optimization(
    optim: OptimConfig,
    groups: list[dict],
    total_steps: int = 0,
    epochs: int = 1,
    loss_scaling: bool = False,
):
    """What `LightningModule.configure_optimizers` returns: ([optimizer], [scheduler configs])."""
    optimizer = make_optimizer(optim, groups, loss_scaling)
    return [optimizer], make_schedulers(optim, optimizer, total_steps, epochs)
