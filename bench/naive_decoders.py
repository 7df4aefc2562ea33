"""Naive reference decoders for bench_training.py: what tutorial code commonly does.

Same sizes and the same `forward(pooled, grid, tokens) -> logits` as captionkit's models, but an
`nn.LSTMCell` stepped in Python over the whole padded length of the batch (no shrinking as
captions end), and for attention the grid projection recomputed inside every step.
"""

from __future__ import annotations

import torch
from torch import nn

from captionkit.data.vocab import Vocabulary
from captionkit.models.step import StepModel


class NaiveShowTell(StepModel, nn.Module):
    """Show-and-Tell: the projected image is the first input, then `<bos> w1 ..`, one step at a
    time through an LSTMCell."""

    def __init__(self, c):
        super().__init__()
        self.image_proj = nn.Sequential(
            nn.Linear(c.feature_dim, c.embed_dim), nn.BatchNorm1d(c.embed_dim)
        )
        self.embed = nn.Embedding(c.vocab_size, c.embed_dim, padding_idx=Vocabulary.pad_id)
        self.cell = nn.LSTMCell(c.embed_dim, c.hidden_dim)
        self.dropout = nn.Dropout(c.dropout)
        self.head = nn.Linear(c.hidden_dim, c.vocab_size)

    def forward(self, pooled, grid, tokens):
        x = torch.cat([self.image_proj(pooled)[:, None], self.embed(tokens)], dim=1)
        h = x.new_zeros(x.shape[0], self.cell.hidden_size)
        c = h.clone()
        outputs = []
        for t in range(x.shape[1]):
            h, c = self.cell(self.dropout(x[:, t]), (h, c))
            outputs.append(self.head(self.dropout(h)))
        return torch.stack(outputs[1:], dim=1)


class NaiveAttention(StepModel, nn.Module):
    """Show-Attend-Tell as tutorials write it: every step projects the whole grid again."""

    attends = True

    def __init__(self, c):
        super().__init__()
        self.config = c  # its alpha_c weighs the regulariser, as for the library's model
        self.embed = nn.Embedding(c.vocab_size, c.embed_dim, padding_idx=Vocabulary.pad_id)
        self.encoder_att = nn.Linear(c.feature_dim, c.attention_dim)
        self.decoder_att = nn.Linear(c.hidden_dim, c.attention_dim)
        self.full_att = nn.Linear(c.attention_dim, 1)
        self.init_h = nn.Linear(c.feature_dim, c.hidden_dim)
        self.init_c = nn.Linear(c.feature_dim, c.hidden_dim)
        self.f_beta = nn.Linear(c.hidden_dim, c.feature_dim)
        self.cell = nn.LSTMCell(c.embed_dim + c.feature_dim, c.hidden_dim)
        self.dropout = nn.Dropout(c.dropout)
        self.head = nn.Linear(c.hidden_dim, c.vocab_size)

    def attend(self, grid, h):
        att = self.full_att(torch.tanh(self.encoder_att(grid) + self.decoder_att(h)[:, None]))
        alpha = att.squeeze(-1).softmax(dim=1)  # [B, L]
        return (grid * alpha[..., None]).sum(dim=1), alpha

    def forward(self, pooled, grid, tokens, return_attention=False):
        """Logits [B, T, V], and the attention weights [B, T, L] with `return_attention`."""
        mean = grid.mean(dim=1)
        h, c = self.init_h(mean), self.init_c(mean)
        embs = self.embed(tokens)
        logits, alphas = [], []
        for t in range(tokens.shape[1]):
            context, alpha = self.attend(grid, h)
            context = torch.sigmoid(self.f_beta(h)) * context
            h, c = self.cell(torch.cat([embs[:, t], context], dim=1), (h, c))
            logits.append(self.head(self.dropout(h)))
            alphas.append(alpha)
        logits = torch.stack(logits, dim=1)
        return (logits, torch.stack(alphas, dim=1)) if return_attention else logits


def naive_model(name: str, model: nn.Module) -> nn.Module | None:
    """The naive counterpart of `model` (same sizes), or None where there is none."""
    naive = {"show_tell": NaiveShowTell, "attention": NaiveAttention}.get(name)
    if naive is None:
        return None
    torch.manual_seed(0)
    return naive(model.config)
