"""A Transformer caption decoder: pre-norm blocks of masked self-attention over the words,
cross-attention over the projected grid, and a feed-forward layer. Decoding caches each layer's
keys and values, so a step costs O(length) rather than recomputing the whole prefix.

Shapes: B images, T caption tokens, L grid positions (memory), D encoder feature size,
M model size (d_model), N heads, K head size (M / N), V vocabulary size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from captionkit.data.vocab import Vocabulary
from captionkit.models.dropout import Dropout
from captionkit.models.step import ModelConfig, StepModel, StepOutput


@dataclass
class TransformerConfig(ModelConfig):
    """Hyperparameters of the Transformer decoder; stored in every checkpoint."""

    d_model: int = 512
    """Size M of every token's representation."""
    n_heads: int = 8
    """Attention heads; must divide `d_model`."""
    n_layers: int = 3
    """Decoder blocks."""
    d_ff: int = 2048
    """Hidden size of the feed-forward layers."""
    dropout: float = 0.1
    """Dropout on embeddings, attention weights and residual branches."""
    max_length: int = 64
    """Most tokens (<bos> included) the learned positions cover."""
    positions: str = "learned"
    """`learned` or `sinusoidal` position embeddings."""
    tie_weights: bool = True
    """Share the word embedding matrix with the output projection."""

    def __post_init__(self):
        if self.positions not in ("learned", "sinusoidal"):
            raise ValueError(f"positions must be 'learned' or 'sinusoidal', not {self.positions!r}")
        if self.d_model % self.n_heads:
            raise ValueError(f"n_heads={self.n_heads} must divide d_model={self.d_model}")


def sinusoidal(positions: torch.Tensor, dim: int) -> torch.Tensor:
    """Vaswani et al.'s position encodings for integer positions [...] -> [..., dim]."""
    freqs = torch.exp(
        torch.arange(0, dim, 2, device=positions.device) * (-math.log(10000.0) / dim)
    )  # [dim/2]
    angles = positions[..., None].float() * freqs  # [..., dim/2]
    return torch.stack([angles.sin(), angles.cos()], dim=-1).flatten(-2)  # interleaved sin/cos


class MultiHeadAttention(nn.Module):
    """Scaled dot-product attention with the projections split out, so the cached path (keys and
    values projected once, then extended) and the full path share weights and code."""

    def __init__(self, d_model: int, n_heads: int, dropout: float):
        super().__init__()
        self.n_heads, self.dropout = n_heads, dropout
        self.q_proj = nn.Linear(d_model, d_model)
        self.kv_proj = nn.Linear(d_model, 2 * d_model)
        self.out_proj = nn.Linear(d_model, d_model)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        """[B, S, M] -> [B, N, S, K]."""
        return x.unflatten(-1, (self.n_heads, -1)).transpose(1, 2)

    def keys_values(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs [B, S, M] -> keys and values [B, N, S, K] each."""
        k, v = self.kv_proj(x).chunk(2, dim=-1)
        return self._heads(k), self._heads(v)

    def attend(self, x: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False):
        """Queries from x [B, S, M] over keys/values [B, N, S', K] -> [B, S, M]."""
        q = self._heads(self.q_proj(x))  # [B, N, S, K]
        p = self.dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=causal)
        return self.out_proj(out.transpose(1, 2).flatten(2))  # [B, S, M]


class DecoderBlock(nn.Module):
    """Pre-norm: x + SelfAttn(LN x), + CrossAttn(LN x, memory), + FFN(LN x)."""

    def __init__(self, c: TransformerConfig):
        super().__init__()
        self.self_norm = nn.LayerNorm(c.d_model)
        self.cross_norm = nn.LayerNorm(c.d_model)
        self.ff_norm = nn.LayerNorm(c.d_model)
        self.self_attn = MultiHeadAttention(c.d_model, c.n_heads, c.dropout)
        self.cross_attn = MultiHeadAttention(c.d_model, c.n_heads, c.dropout)
        self.ff = nn.Sequential(
            nn.Linear(c.d_model, c.d_ff), nn.GELU(), Dropout(c.dropout),
            nn.Linear(c.d_ff, c.d_model),
        )  # fmt: skip
        self.dropout = Dropout(c.dropout)

    def forward(self, x: torch.Tensor, memory_kv, cache=None):
        """x [B, S, M], memory_kv: the grid's keys/values [B, N, L, K]. Without a cache, S is the
        whole caption and self-attention is causal; with one (the keys/values [B, N, t, K] of
        the t earlier positions), x is the next position and sees the cache and itself.
        -> (x [B, S, M], this block's self-attention keys/values, cache included)."""
        h = self.self_norm(x)
        k, v = self.self_attn.keys_values(h)  # [B, N, S, K] each
        if cache is not None:
            k, v = torch.cat([cache[0], k], dim=2), torch.cat([cache[1], v], dim=2)
        x = x + self.dropout(self.self_attn.attend(h, k, v, causal=cache is None))
        x = x + self.dropout(self.cross_attn.attend(self.cross_norm(x), *memory_kv))
        return x + self.dropout(self.ff(self.ff_norm(x))), (k, v)


class TransformerDecoder(StepModel, nn.Module):
    """Grid features -> Transformer decoder; see the module docstring."""

    uses_grid = True
    attends = False  # cross-attention has heads and layers: no one map over the grid

    def __init__(self, config: TransformerConfig):
        super().__init__()
        c = self.config = config
        # Each layer's memory keys and values: the same for all of an image's rows.
        self.image_state = tuple(f"memory_{kv}.{i}" for i in range(c.n_layers) for kv in "kv")
        # Pre-norm blocks normalise their queries, never the memory: this LayerNorm plays the
        # part of a Transformer encoder's final norm.
        self.memory_proj = nn.Sequential(
            nn.Linear(c.feature_dim, c.d_model), nn.LayerNorm(c.d_model)
        )
        self.embed = nn.Embedding(c.vocab_size, c.d_model, padding_idx=Vocabulary.pad_id)
        # As in fairseq: rows of norm ~1, scaled by sqrt(M) at the input so that words and
        # positions have the same scale, used unscaled by the tied output projection.
        nn.init.normal_(self.embed.weight, std=c.d_model**-0.5)
        with torch.no_grad():
            self.embed.weight[Vocabulary.pad_id].zero_()
        if c.positions == "learned":
            self.pos_embed = nn.Embedding(c.max_length, c.d_model)
        self.blocks = nn.ModuleList(DecoderBlock(c) for _ in range(c.n_layers))
        self.final_norm = nn.LayerNorm(c.d_model)
        self.dropout = Dropout(c.dropout)
        # Tying reuses embed.weight in F.linear rather than sharing a Parameter between two
        # modules: safetensors refuses to save tensors that share memory.
        self.head_bias = nn.Parameter(torch.zeros(c.vocab_size)) if c.tie_weights else None
        self.head = None if c.tie_weights else nn.Linear(c.d_model, c.vocab_size)

    def _embed(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """tokens, positions [B, S] -> [B, S, M]."""
        if self.config.positions == "learned":
            if int(positions.max()) >= self.config.max_length:
                raise ValueError(f"captions longer than max_length={self.config.max_length}")
            pos = self.pos_embed(positions)
        else:
            pos = sinusoidal(positions, self.config.d_model)
        x = self.embed(tokens) * math.sqrt(self.config.d_model) + pos
        return self.dropout(x)

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        x = self.final_norm(x)
        if self.head is None:
            return F.linear(x, self.embed.weight, self.head_bias)
        return self.head(x)

    def _memory_kv(self, pooled: torch.Tensor, grid: torch.Tensor | None):
        """Per-layer cross-attention keys/values [B, N, L, K] of the projected grid (the pooled
        vector as a single memory token if there is no grid). Runs once per image."""
        memory = self.memory_proj(grid if grid is not None else pooled[:, None])  # [B, L, M]
        return [block.cross_attn.keys_values(memory) for block in self.blocks]

    def forward(self, pooled: torch.Tensor, grid: torch.Tensor | None, tokens: torch.Tensor):
        """Teacher forcing: grid [B, L, D], tokens [B, T] (from <bos>) -> logits [B, T, V].

        Padding follows the words, so the causal mask alone keeps real positions from seeing it.
        """
        memory_kv = self._memory_kv(pooled, grid)
        positions = torch.arange(tokens.shape[1], device=tokens.device).expand_as(tokens)
        x = self._embed(tokens, positions)  # [B, T, M]
        for block, mem in zip(self.blocks, memory_kv):
            x, _ = block(x, mem)
        return self._logits(x)  # [B, T, V]

    def init_state(
        self, pooled: torch.Tensor, grid: torch.Tensor | None
    ) -> dict[str, torch.Tensor]:
        """Memory keys/values, empty self-attention caches [B, N, 0, K] and position 0 [B];
        all batch-first so decoders can expand and reorder them with the beams."""
        state = {}
        for i, (k, v) in enumerate(self._memory_kv(pooled, grid)):
            state[f"memory_k.{i}"], state[f"memory_v.{i}"] = k, v
            state[f"self_k.{i}"], state[f"self_v.{i}"] = k[:, :, :0], v[:, :, :0]
        state["position"] = torch.zeros(pooled.shape[0], dtype=torch.long, device=pooled.device)
        return state

    def step(self, tokens: torch.Tensor, state: dict[str, torch.Tensor]) -> StepOutput:
        """One decoding step: tokens [B] -> logits [B, V] and the new state, the caches grown by
        one position. Attends over the cache: no mask needed, the future is not there yet."""
        state = dict(state)
        x = self._embed(tokens[:, None], state["position"][:, None])  # [B, 1, M]
        for i, block in enumerate(self.blocks):
            memory_kv = state[f"memory_k.{i}"], state[f"memory_v.{i}"]
            cache = state[f"self_k.{i}"], state[f"self_v.{i}"]  # [B, N, t, K] each
            x, (state[f"self_k.{i}"], state[f"self_v.{i}"]) = block(x, memory_kv, cache)
        state["position"] = state["position"] + 1
        return StepOutput(self._logits(x[:, 0]), state)
