"""Show and Tell (Vinyals et al., 2015): the projected image feature is the first input of an
LSTM (or GRU) language model, which then reads `<bos> w1 ... wn` and predicts `w1 ... wn <eos>`.
With `image_input="init_state"` the feature sets the initial state of every layer instead.

Shapes: B images, T caption tokens, D encoder feature size, E embedding size, H hidden size,
V vocabulary size, N layers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from captionkit.models.dropout import Dropout
from captionkit.models.step import ModelConfig, StepModel, StepOutput


@dataclass
class ShowTellConfig(ModelConfig):
    """Hyperparameters of Show-and-Tell; stored in every checkpoint."""

    embed_dim: int = 512
    """Size E of word embeddings and of the projected image feature."""
    hidden_dim: int = 512
    """Size H of the recurrent state."""
    num_layers: int = 1
    """Stacked recurrent layers."""
    dropout: float = 0.5
    """Dropout on the inputs and outputs of the recurrent network."""
    rnn: str = "lstm"
    """`lstm` or `gru`."""
    image_input: str = "first_word"
    """How the projected image feature enters the network: `first_word` (the paper: fed as the
    input before `<bos>`) or `init_state` (h0, and c0 for an LSTM, of every layer are
    tanh(Linear(feature)))."""

    def __post_init__(self):
        if self.rnn not in ("lstm", "gru"):
            raise ValueError(f"rnn must be 'lstm' or 'gru', not {self.rnn!r}")
        if self.image_input not in ("first_word", "init_state"):
            raise ValueError(
                f"image_input must be 'first_word' or 'init_state', not {self.image_input!r}"
            )


class ShowTell(StepModel, nn.Module):
    """Pooled image feature -> recurrent decoder; see the module docstring (`StepModel`'s
    defaults: no grid, no attention)."""

    def __init__(self, config: ShowTellConfig):
        super().__init__()
        self.config = c = config
        # BatchNorm standardises each feature over the batch, removing the component that all
        # images share: on frozen CNN features it doubles CIDEr in a few epochs
        # (docs/experiments.md).
        self.image_proj = nn.Sequential(
            nn.Linear(c.feature_dim, c.embed_dim), nn.BatchNorm1d(c.embed_dim)
        )
        self.embed = nn.Embedding(c.vocab_size, c.embed_dim, padding_idx=0)
        rnn_cls = nn.LSTM if c.rnn == "lstm" else nn.GRU
        between_layers = c.dropout if c.num_layers > 1 else 0.0
        self.rnn = rnn_cls(
            c.embed_dim, c.hidden_dim, c.num_layers, batch_first=True, dropout=between_layers
        )
        self.dropout = Dropout(c.dropout)
        self.head = nn.Linear(c.hidden_dim, c.vocab_size)
        if c.image_input == "init_state":  # only then: first_word checkpoints keep their keys
            self.init_h = nn.Linear(c.embed_dim, c.num_layers * c.hidden_dim)
            if c.rnn == "lstm":
                self.init_c = nn.Linear(c.embed_dim, c.num_layers * c.hidden_dim)

    def forward(self, pooled: torch.Tensor, grid: torch.Tensor | None, tokens: torch.Tensor):
        """Teacher forcing: pooled [B, D], tokens [B, T] (from <bos>) -> logits [B, T, V]."""
        image = self.image_proj(pooled)  # [B, E]
        if self.config.image_input == "init_state":
            out, _ = self.rnn(self.dropout(self.embed(tokens)), self._initial_hidden(image))
            return self.head(self.dropout(out))  # [B, T, V]
        x = torch.cat([image[:, None], self.embed(tokens)], dim=1)  # [B, T+1, E]
        out, _ = self.rnn(self.dropout(x))  # [B, T+1, H]
        return self.head(self.dropout(out[:, 1:]))  # [B, T, V]: the image step predicts nothing

    def init_state(
        self, pooled: torch.Tensor, grid: torch.Tensor | None
    ) -> dict[str, torch.Tensor]:
        """The state decoding starts from: after feeding the image, or set from it. Tensors are
        batch-first [B, N, H]."""
        image = self.image_proj(pooled)  # [B, E]
        if self.config.image_input == "init_state":
            return self._to_state(self._initial_hidden(image))
        _, hidden = self.rnn(image[:, None])
        return self._to_state(hidden)

    def _initial_hidden(self, image: torch.Tensor):
        """Projected image [B, E] -> h0 (and c0) [N, B, H], tanh-squashed like an LSTM's own h."""
        c = self.config

        def layers(linear: nn.Linear) -> torch.Tensor:
            return torch.tanh(linear(image)).view(-1, c.num_layers, c.hidden_dim).transpose(0, 1)

        h = layers(self.init_h).contiguous()
        return (h, layers(self.init_c).contiguous()) if c.rnn == "lstm" else h

    def step(self, tokens: torch.Tensor, state: dict[str, torch.Tensor]) -> StepOutput:
        """One decoding step: tokens [B] -> logits [B, V] and the new state."""
        hidden = (state["h"], state["c"]) if self.config.rnn == "lstm" else state["h"]
        hidden = self._from_state(hidden)
        out, hidden = self.rnn(self.embed(tokens)[:, None], hidden)  # out [B, 1, H]
        return StepOutput(self.head(out[:, 0]), self._to_state(hidden))

    def _to_state(self, hidden) -> dict[str, torch.Tensor]:
        # nn.LSTM keeps layers first ([N, B, H]); decoding reorders beams along dim 0.
        if isinstance(hidden, tuple):
            return {"h": hidden[0].transpose(0, 1), "c": hidden[1].transpose(0, 1)}
        return {"h": hidden.transpose(0, 1)}

    @staticmethod
    def _from_state(hidden):
        if isinstance(hidden, tuple):
            return tuple(t.transpose(0, 1).contiguous() for t in hidden)
        return hidden.transpose(0, 1).contiguous()
