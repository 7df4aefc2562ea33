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
    SoftAttention,
    feature_embedding,
    running_lengths,
    stack_padded,
    word_embedding,
)
from captionkit.models.step import StepOutput


@dataclass
class UpDownConfig:
    """Hyperparameters of the top-down attention decoder; stored in every checkpoint."""

    vocab_size: int
    """Number of tokens, specials included."""
    feature_dim: int
    """Size D of the encoder's grid features (and of the pooled feature)."""
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


class UpDown(nn.Module):
    """Grid features -> top-down attention decoder; see the module docstring."""

    uses_grid = True
    attends = True
    shares_images = True  # `forward` takes features per image and `image_index` (grouped batches)
    image_state = (
        "grid",
        "grid_att",
        "mean",
    )  # the same for all of an image's rows (`models.step`)

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
        self.dropout = nn.Dropout(c.dropout)
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

    def forward(self, pooled: torch.Tensor, grid: torch.Tensor | None, tokens: torch.Tensor,
                return_attention: bool = False, image_index: torch.Tensor | None = None
                ):  # fmt: skip
        """Teacher forcing: grid [B, L, D], tokens [B, T] (from <bos>) -> logits [B, T, V] (and
        α [B, T, L] with `return_attention`). As in `ShowAttendTell.forward`, captions run
        longest first only up to their last real token; later positions get the head's bias.
        `image_index` as in `ShowAttendTell.forward` (features per image)."""
        lengths = running_lengths(tokens)  # [B]
        order = lengths.argsort(descending=True, stable=True)  # [B]
        if image_index is None:
            encoded = self._encode(pooled[order], None if grid is None else grid[order])
        else:  # pooled [I, D], grid [I, L, D]: each image's work once, shared by its captions
            encoded = [x[image_index[order]] for x in self._encode(pooled, grid)]
        hs, alphas = self._run_sorted(encoded, tokens[order], lengths[order].tolist())
        restore = order.argsort()
        logits = self.head(self.dropout(hs[restore]))  # [B, T, V]
        return (logits, alphas[restore]) if return_attention else logits

    def _run_sorted(self, encoded, tokens, lengths: list[int]):
        """The recurrence over captions sorted longest first -> language h [B, T, H] and
        α [B, T, L], zero after each caption's length. The words' and the mean feature's share
        of the attention LSTM's input product is one matrix product for all steps."""
        c = self.config
        grid, grid_att, mean = encoded  # [B, L, H], [B, L, A], [B, H] (from `_encode`)
        (B, T), H = tokens.shape, c.hidden_dim
        w_ih = self.att_lstm.weight_ih  # [4H, H + H + E]
        bias = self.att_lstm.bias_ih + self.att_lstm.bias_hh
        from_mean = F.linear(mean, w_ih[:, H : 2 * H], bias)  # [B, 4H]
        x_words = F.linear(self.embed(tokens.t()), w_ih[:, 2 * H :]).unbind()  # T x [B, 4H]
        w_h = w_ih[:, :H]  # [4H, H]: the previous language h's share
        zeros = grid.new_zeros(B, H)
        h_att, c_att, h_lang, c_lang = zeros, zeros, zeros, zeros
        running = [sum(n > t for n in lengths) for t in range(max(lengths, default=0))]
        hs, alphas = [], []
        for t, n in enumerate(running):  # n: captions still running, a prefix of the batch
            h_att, c_att, h_lang, c_lang = h_att[:n], c_att[:n], h_lang[:n], c_lang[:n]
            gates = x_words[t][:n] + from_mean[:n] + h_lang @ w_h.t()
            gates = gates + h_att @ self.att_lstm.weight_hh.t()  # [n, 4H]
            h_att, c_att = _lstm_update(gates, c_att)
            context, alpha = self.attention(grid[:n], grid_att[:n], h_att)  # [n, H], [n, L]
            h_lang, c_lang = self.lang_lstm(torch.cat([context, h_att], dim=-1), (h_lang, c_lang))
            hs.append(F.pad(h_lang, (0, 0, 0, B - n)))
            alphas.append(F.pad(alpha, (0, 0, 0, B - n)))
        return (stack_padded(hs, (B, H), T, grid.device),
                stack_padded(alphas, grid.shape[:2], T, grid.device))  # fmt: skip

    def init_state(
        self, pooled: torch.Tensor, grid: torch.Tensor | None
    ) -> dict[str, torch.Tensor]:
        """Embed and project the grid once; both LSTMs start at zero (batch-first tensors)."""
        grid, grid_att, mean = self._encode(pooled, grid)
        zeros = mean.new_zeros(mean.shape[0], self.config.hidden_dim)
        return {"h_att": zeros, "c_att": zeros, "h_lang": zeros, "c_lang": zeros,
                "grid": grid, "grid_att": grid_att, "mean": mean}  # fmt: skip

    def step(self, tokens: torch.Tensor, state: dict[str, torch.Tensor]) -> StepOutput:
        """One decoding step: tokens [B] -> logits [B, V], the new state and the attention
        [B, L] over the grid that predicted them."""
        lstm_state = tuple(state[k] for k in ("h_att", "c_att", "h_lang", "c_lang"))
        (h_att, c_att, h_lang, c_lang), alpha = self._cell(
            self.embed(tokens), state["grid"], state["grid_att"], state["mean"], lstm_state
        )
        new_state = {**state, "h_att": h_att, "c_att": c_att, "h_lang": h_lang,
                     "c_lang": c_lang}  # fmt: skip
        return StepOutput(self.head(self.dropout(h_lang)), new_state, alpha)


def _lstm_update(gates: torch.Tensor, c: torch.Tensor):
    """nn.LSTMCell's update from its summed gate pre-activations [B, 4H] (order i, f, g, o)."""
    i, f, g, o = gates.chunk(4, dim=1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c
