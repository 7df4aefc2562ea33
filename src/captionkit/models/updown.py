"""Bottom-up and top-down attention (Anderson et al., 2018), the top-down decoder: two LSTMs per
step. The attention LSTM reads the previous language state, the mean image feature and the word,
and its state asks where to look; the language LSTM reads the attended context with that state
and predicts the word. Features are embedded first (Linear, ReLU, dropout), as in
ruotianluo/ImageCaptioning.pytorch's `TopDownCore`.

Shapes: B images, T caption tokens, L grid positions, D encoder feature size, E embedding size,
H hidden size, A attention size, V vocabulary size.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from captionkit.models.attention import (
    AttentionDecoder,
    SoftAttention,
    cast_once,
    feature_embedding,
    lstm_update,
    running_counts,
    stack_steps,
    word_embedding,
)
from captionkit.models.dropout import Dropout
from captionkit.models.step import ModelConfig, StepOutput


@dataclass
class UpDownConfig(ModelConfig):
    """Hyperparameters of the top-down attention decoder; stored in every checkpoint."""

    embed_dim: int = 512
    """Size E of word embeddings."""
    hidden_dim: int = 512
    """Size H of both LSTM states and of the embedded features."""
    attention_dim: int = 512
    """Size A of the additive attention's hidden layer."""
    dropout: float = 0.5
    """Dropout on the language LSTM's output before the vocabulary projection."""
    feature_dropout: float = 0.5
    """Dropout on the embedded grid and pooled features."""
    word_dropout: float = 0.5
    """ReLU and dropout after the word embedding (as the reference's); 0 = plain."""
    alpha_c: float = 0.0
    """Weight λ of the doubly stochastic regulariser λ·Σ_l (1 − Σ_t α_tl)² (0 = off, the
    paper's choice)."""


class UpDown(AttentionDecoder):
    """Grid features -> top-down attention decoder; see the module docstring."""

    image_state = ("grid", "grid_att", "mean")  # the same for all of an image's rows (StepModel)
    image_rows = True  # `SoftAttention` takes them once per image; `step` repeats the mean

    def __init__(self, config: UpDownConfig):
        super().__init__()
        self.config = c = config
        self.embed = word_embedding(c.vocab_size, c.embed_dim, c.word_dropout)
        self.grid_embed = feature_embedding(c.feature_dim, c.hidden_dim, c.feature_dropout, True)
        self.pooled_embed = feature_embedding(c.feature_dim, c.hidden_dim, c.feature_dropout, True)
        self.attention = SoftAttention(c.hidden_dim, c.hidden_dim, c.attention_dim)
        # Attention LSTM input: [previous language h, mean feature, word] (H + H + E).
        self.att_lstm = nn.LSTMCell(2 * c.hidden_dim + c.embed_dim, c.hidden_dim)
        # Language LSTM input: [attended context, attention LSTM h] (H + H).
        self.lang_lstm = nn.LSTMCell(2 * c.hidden_dim, c.hidden_dim)
        self.dropout = Dropout(c.dropout)
        self.head = nn.Linear(c.hidden_dim, c.vocab_size)

    def _encode(self, pooled: torch.Tensor, grid: torch.Tensor | None):
        """Embedded grid [B, L, H] (the pooled vector as a one-position grid if None), its
        attention projection [B, L, A] and the embedded pooled feature [B, H]."""
        if grid is None:
            grid = pooled[:, None]
        grid = self.grid_embed(grid)  # [B, L, H]
        return grid, self.attention.grid_proj(grid), self.pooled_embed(pooled)

    def _cell(self, emb, grid, grid_att, mean, state):
        """One step: word embedding [B, E] and the two LSTMs' (h, c) -> new states, the language
        h [B, H] and α [B, L]."""
        h_att, c_att, h_lang, c_lang = state
        h_att, c_att = self.att_lstm(torch.cat([h_lang, mean, emb], dim=-1), (h_att, c_att))
        context, alpha = self.attention(grid, grid_att, h_att)  # [B, H], [B, L]
        h_lang, c_lang = self.lang_lstm(torch.cat([context, h_att], dim=-1), (h_lang, c_lang))
        return (h_att, c_att, h_lang, c_lang), alpha

    def _run_sorted(self, encoded, tokens, lengths: list[int]):
        """The recurrence over captions sorted longest first -> language h [B, T, H] and
        α [B, T, L], zero after each caption's length. The words' and the mean feature's share
        of the attention LSTM's input product is one matrix product for all steps."""
        c = self.config
        grid, grid_att, mean = encoded  # [B, L, H], [B, L, A], [B, H] (from `_encode`)
        B, H = tokens.shape[0], c.hidden_dim
        w_ih = self.att_lstm.weight_ih  # [4H, H + H + E]
        bias = self.att_lstm.bias_ih + self.att_lstm.bias_hh
        from_mean = F.linear(mean, w_ih[:, H : 2 * H], bias)  # [B, 4H]
        x_words = F.linear(self.embed(tokens.t()), w_ih[:, 2 * H :]).unbind()  # T x [B, 4H]
        # [4H, H] each: the previous language h's share, and the attention LSTM's own h's
        w_h, w_hh = cast_once(w_ih[:, :H], self.att_lstm.weight_hh)
        zeros = grid.new_zeros(B, H)
        h_att, c_att, h_lang, c_lang = zeros, zeros, zeros, zeros
        running = running_counts(lengths)
        hs, alphas = [], []
        for t, n in enumerate(running):  # n: captions still running, a prefix of the batch
            h_att, c_att, h_lang, c_lang = h_att[:n], c_att[:n], h_lang[:n], c_lang[:n]
            gates = x_words[t][:n] + from_mean[:n] + h_lang @ w_h.t()
            gates = gates + h_att @ w_hh.t()  # [n, 4H]
            h_att, c_att = lstm_update(gates, c_att)
            context, alpha = self.attention(grid[:n], grid_att[:n], h_att)  # [n, H], [n, L]
            h_lang, c_lang = self.lang_lstm(torch.cat([context, h_att], dim=-1), (h_lang, c_lang))
            hs.append(h_lang)
            alphas.append(alpha)
        return stack_steps(hs, alphas, tokens.shape[1], H, grid)

    def init_state(
        self, pooled: torch.Tensor, grid: torch.Tensor | None
    ) -> dict[str, torch.Tensor]:
        """Embed and project the grid once; both LSTMs start at zero (batch-first tensors)."""
        grid, grid_att, mean = self._encode(pooled, grid)
        zeros = mean.new_zeros(mean.shape[0], self.config.hidden_dim)
        return {
            "h_att": zeros,
            "c_att": zeros,
            "h_lang": zeros,
            "c_lang": zeros,
            "grid": grid,
            "grid_att": grid_att,
            "mean": mean,
        }

    def step(self, tokens: torch.Tensor, state: dict[str, torch.Tensor]) -> StepOutput:
        """One decoding step: tokens [B] -> logits [B, V], the new state and the attention
        [B, L] over the grid that predicted them."""
        lstm_state = tuple(state[k] for k in ("h_att", "c_att", "h_lang", "c_lang"))
        mean = state["mean"]  # [B or B·K, H]: once per image, or per row
        mean = mean.repeat_interleave(len(tokens) // len(mean), dim=0)  # [B·K, H]
        (h_att, c_att, h_lang, c_lang), alpha = self._cell(
            self.embed(tokens), state["grid"], state["grid_att"], mean, lstm_state
        )
        new_state = {**state, "h_att": h_att, "c_att": c_att, "h_lang": h_lang, "c_lang": c_lang}
        return StepOutput(self.head(self.dropout(h_lang)), new_state, alpha)
