"""Dropout with its mask drawn by `torch.rand`: on a CPU, `torch.nn.Dropout`'s `bernoulli_`
draws the mask several times slower, and the mask of the embedded grid [B, L, H] alone took a
tenth of a training step of the attention decoder (docs/experiments.md, "Training ahead of the
reference"). The same distribution as `nn.Dropout` (each element zeroed with probability p, the
rest scaled by 1 / (1 - p)), drawn from the same generator, but not the same draws."""

from __future__ import annotations

import torch
from torch import nn


def dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """`F.dropout(x, p, training)` with the mask drawn by `torch.rand`."""
    if not training or p == 0:
        return x
    if p == 1:
        return x * 0  # keeps the graph, as F.dropout's
    # Uniform draws in float32 whatever x's dtype: bf16 would round p itself.
    keep = torch.rand(x.shape, device=x.device) >= p
    return x * keep.to(x.dtype).div_(1 - p)


class Dropout(nn.Dropout):
    """`nn.Dropout` (the same `p`, `train()`/`eval()` and `isinstance`) drawing its mask with
    `dropout` above."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)
