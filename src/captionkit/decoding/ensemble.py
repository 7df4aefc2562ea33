"""Several trained models decoding as one (#16): every step averages the members' next-token
distributions, so greedy, beam search (diverse too), sampling and n-best all work unchanged.

Each member reads its own features (members may differ in encoder): `init_state` takes one
pooled vector batch and one grid (or None) per member, in member order. The members must share
the tokenizer (`check_same_tokenizer`): their token ids must mean the same words.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from captionkit.errors import CaptionkitError
from captionkit.models.step import StepModel, StepOutput


class Ensemble(StepModel):
    """Members as one model under `models.step`'s contract.

    `mean="probability"` (the default, as ruotianluo/ImageCaptioning.pytorch's ensembles):
    each step's log-probabilities are the log of the members' mean probability;
    `"log_probability"`: the mean of their log-probabilities (a normalised geometric mean, once
    decoding's log-softmax has run). The logit filters then apply to the combined distribution.

    Attention: the mean of the attending members' maps when their grids have the same number of
    positions, else the first attending member's map.
    """

    def __init__(self, models: list, mean: str = "probability"):
        if not models:
            raise CaptionkitError("an ensemble needs at least one model")
        self.models, self.mean = list(models), mean
        self.attends = any(m.attends for m in self.models)
        self.uses_grid = any(m.uses_grid for m in self.models)
        # Each member's state is its own dict: a name is left alone in whichever member has it.
        self.image_state = tuple(dict.fromkeys(k for m in self.models for k in m.image_state))
        self.image_rows = all(m.image_rows for m in self.models)

    @property
    def training(self) -> bool:
        return any(m.training for m in self.models)

    def eval(self) -> Ensemble:
        return self.train(False)

    def train(self, mode: bool = True) -> Ensemble:
        for m in self.models:
            m.train(mode)
        return self

    def init_state(self, pooled: list, grid: list) -> list[dict]:
        """pooled: [B, D_i] per member; grid: [B, L_i, D_i] or None per member."""
        if len(pooled) != len(self.models) or len(grid) != len(self.models):
            raise CaptionkitError(
                f"an ensemble of {len(self.models)} models needs features for "
                f"each, not {len(pooled)}"
            )
        return [m.init_state(p, g) for m, p, g in zip(self.models, pooled, grid)]

    def step(self, tokens: torch.Tensor, state: list[dict]) -> StepOutput:
        outs = [m.step(tokens, s) for m, s in zip(self.models, state)]
        logprobs = torch.stack([F.log_softmax(o.logits.float(), dim=-1) for o in outs])  # [M, B, V]
        if self.mean == "probability":
            combined = torch.logsumexp(logprobs, dim=0) - math.log(len(outs))
        else:
            combined = logprobs.mean(dim=0)
        return StepOutput(combined, [o.state for o in outs], _attention(outs))


def _attention(outs: list[StepOutput]) -> torch.Tensor | None:
    maps = [o.attention for o in outs if o.attention is not None]  # [B, L_i] each
    if not maps:
        return None
    if all(m.shape == maps[0].shape for m in maps):
        return torch.stack([m.float() for m in maps]).mean(dim=0)
    return maps[0]


def check_same_tokenizer(members: list[tuple[str, object]]) -> None:
    """Refuse members (name, tokenizer) whose tokenizers differ, naming the first two runs."""
    first_name, first = members[0]
    for name, tokenizer in members[1:]:
        if tokenizer.to_dict() != first.to_dict():
            raise CaptionkitError(
                f"{first_name} and {name} have different tokenizers: the runs "
                "of an ensemble must share one"
            )
