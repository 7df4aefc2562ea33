"""Show, Attend and Tell (Xu et al., 2015) with soft attention: at every step an LSTM looks at
the spatial grid through additive (Bahdanau) attention, and the gated context vector joins the
previous word as its input.

Shapes: B images, T caption tokens, L grid positions, D encoder feature size, E embedding size,
H hidden size, A attention size, V vocabulary size.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from captionkit.data.vocab import Vocabulary
from captionkit.models.dropout import Dropout, dropout
from captionkit.models.step import ModelConfig, StepModel, StepOutput

BLOCK_ELEMENTS = 2**19
"""Elements of the [rows, L, A] block `SoftAttention` sums at a time when decoding (2 MB fp32)."""


@dataclass
class AttentionConfig(ModelConfig):
    """Hyperparameters of Show-Attend-and-Tell; stored in every checkpoint."""

    embed_dim: int = 512
    """Size E of word embeddings."""
    hidden_dim: int = 512
    """Size H of the LSTM state."""
    attention_dim: int = 512
    """Size A of the additive attention's hidden layer."""
    dropout: float = 0.5
    """Dropout on the LSTM output before the vocabulary projection."""
    embed_features: bool = True
    """Embed the grid to `hidden_dim` (Linear, ReLU, dropout) before attention and the LSTM read
    it, as ruotianluo/ImageCaptioning.pytorch's `att_embed`: the model then sees H-d regularised
    features instead of the raw D-d ones (and each step's attention is cheaper)."""
    feature_dropout: float = 0.5
    """Dropout on the embedded grid (with `embed_features`)."""
    word_dropout: float = 0.5
    """ReLU and dropout after the word embedding (as the reference's `embed`); 0 = plain."""
    alpha_c: float = 0.02
    """Weight λ of the doubly stochastic regulariser λ·Σ_l (1 − Σ_t α_tl)²; 0 disables it. The
    paper's λ = 1 over a 7x7 grid makes the regulariser ~15x the cross-entropy; 0.02 is about
    λ = 1 on the mean over the grid (the popular PyTorch tutorial's)."""
    gate: bool = True
    """Scale the context by β = sigmoid(f_beta(h)), the paper's gating scalar (per feature)."""
    weight_drop: float = 0.0
    """DropConnect on the LSTM's hidden-to-hidden weights in training (AWD-LSTM's weight drop,
    Merity et al. 2018): one mask per batch, shared by all its steps; 0 = off."""


class SoftAttention(nn.Module):
    """Additive attention: e_l = w · tanh(W_enc a_l + W_dec h), α = softmax_l(e)."""

    def __init__(self, feature_dim: int, hidden_dim: int, attention_dim: int):
        super().__init__()
        self.grid_proj = nn.Linear(feature_dim, attention_dim)  # W_enc: once per image
        self.hidden_proj = nn.Linear(hidden_dim, attention_dim)  # W_dec: once per step
        self.score = nn.Linear(attention_dim, 1)

    def forward(self, grid: torch.Tensor, grid_att: torch.Tensor, h: torch.Tensor):
        """grid [B, L, D], its projection W_enc grid [B, L, A] and h [B·K, H] (K consecutive rows
        per image: 1 in training, the beams when decoding keeps the grid once per image)
        -> (context [B·K, D], α [B·K, L])."""
        images, regions = grid_att.shape[:2]
        query = self.hidden_proj(h).view(images, -1, grid_att.shape[2])  # [B, K, A]
        if torch.is_grad_enabled() or torch.jit.is_tracing() or torch.compiler.is_compiling():
            e = self._scores(grid_att, query)  # [B, K, L]
        else:
            e = self._blocked_scores(grid_att, query)
        alpha = e.softmax(dim=-1)  # [B, K, L]
        context = torch.bmm(alpha, grid)  # [B, K, D]
        return context.view(h.shape[0], -1), alpha.view(h.shape[0], regions)

    def _scores(self, grid_att: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        """e [B, K, L] for grid_att [B, L, A] and query [B, K, A]. tanh in place on the sum: one
        [B, K, L, A] tensor instead of two."""
        return self.score((grid_att[:, None] + query[:, :, None]).tanh_()).squeeze(-1)

    def _blocked_scores(self, grid_att: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        """The same scores e [B, K, L], a block of images at a time. Decoding runs B·K = images
        x beams rows (512 at batch 64 and a beam of 8: a [B, K, L, A] sum of 51 MB); the sum,
        its tanh and the score each pass over it, from memory, but a block of ~2 MB stays in the
        CPU's cache through all three: 1.6x faster for this part on one thread, the same
        numbers. Not under autograd, which keeps the whole tanh for the backward, nor when
        tracing for export (a Python loop over the batch would fix its size in the graph)."""
        per_image = query.shape[1] * grid_att.shape[1] * grid_att.shape[2]
        rows = max(1, BLOCK_ELEMENTS // per_image)
        if grid_att.shape[0] <= rows:  # one block: no copy into a new tensor
            return self._scores(grid_att, query)
        blocks = zip(grid_att.split(rows), query.split(rows))
        return torch.cat([self._scores(g, q) for g, q in blocks])


class AttentionDecoder(StepModel, nn.Module):
    """What Show-Attend-Tell and the top-down decoder (`updown`) share: teacher forcing as an LSTM
    recurrence over the captions sorted longest first, each run only up to its last word.

    A subclass gives `_encode(pooled [B, D], grid [B, L, D] | None)`, the batch-first tensors of
    each image that its recurrence reads; `_run_sorted(encoded, tokens [B, T], lengths)`, the
    recurrence over captions sorted longest first -> h [B, T, H], α [B, T, L]; and the `dropout`
    and `head` that turn h into logits.
    """

    uses_grid = True
    attends = True
    shares_images = True  # `forward` takes features per image and `image_index` (grouped batches)
    selects_steps = True  # `forward` takes `steps`: logits of the steps the loss reads only

    def forward(
        self,
        pooled: torch.Tensor,
        grid: torch.Tensor | None,
        tokens: torch.Tensor,
        return_attention: bool = False,
        image_index: torch.Tensor | None = None,
        steps: torch.Tensor | None = None,
    ):
        """Teacher forcing: grid [B, L, D], tokens [B, T] (from <bos>) -> logits [B, T, V], and
        with `return_attention` also the attention weights α [B, T, L] (for the regulariser).

        Each caption is run only up to its last token that is neither <pad> nor <eos>: later
        positions predict padding, which the loss ignores, and get the logits of a zero state
        (the head's bias) and zero attention. Elsewhere this equals stepping `step` (tested).
        With `image_index` [B], pooled [I, D] and grid [I, L, D] are per image and caption b
        reads image `image_index[b]`: the image's work in `_encode` is done once per image.
        With `steps` [B, T] (bool), the logits of just those steps, [n, V] in row-major order:
        training asks for the steps its loss reads, and the vocabulary projection (a quarter of
        the step's FLOPs) skips the padding.
        """
        lengths = running_lengths(tokens)  # [B]: steps each caption needs
        # Longest first, so that the captions still running are always a prefix of the batch
        # (as in sgrvinod's Show-Attend-Tell tutorial): no work on padding, no gathers.
        order = lengths.argsort(descending=True, stable=True)  # [B]
        if image_index is None:
            encoded = self._encode(pooled[order], None if grid is None else grid[order])
        else:  # pooled [I, D], grid [I, L, D]: each image's work once, shared by its captions
            encoded = [x[image_index[order]] for x in self._encode(pooled, grid)]
        hs, alphas = self._run_sorted(encoded, tokens[order], lengths[order].tolist())
        restore = order.argsort()  # [B]
        hs = self.dropout(hs[restore])  # [B, T, H]: dropout over all steps, as without `steps`
        logits = self.head(hs if steps is None else hs[steps])  # [B, T, V] or [n, V]
        return (logits, alphas[restore]) if return_attention else logits


class ShowAttendTell(AttentionDecoder):
    """Grid features -> attention LSTM decoder; see the module docstring."""

    image_state = ("grid", "grid_att")  # the same for all of an image's rows (StepModel)
    image_rows = True  # `SoftAttention` takes them once per image

    def __init__(self, config: AttentionConfig):
        super().__init__()
        self.config = c = config
        self.embed = word_embedding(c.vocab_size, c.embed_dim, c.word_dropout)
        # With the feature embedding everything downstream reads H-d features; else raw D-d.
        self.grid_embed = feature_embedding(
            c.feature_dim, c.hidden_dim, c.feature_dropout, c.embed_features
        )
        d = c.hidden_dim if c.embed_features else c.feature_dim
        self.attention = SoftAttention(d, c.hidden_dim, c.attention_dim)
        # The paper's f_init,h and f_init,c: the initial state summarises the whole image.
        self.init_h = nn.Linear(d, c.hidden_dim)
        self.init_c = nn.Linear(d, c.hidden_dim)
        self.f_beta = nn.Linear(c.hidden_dim, d)
        self.lstm = nn.LSTMCell(c.embed_dim + d, c.hidden_dim)
        self.dropout = Dropout(c.dropout)
        self.head = nn.Linear(c.hidden_dim, c.vocab_size)

    def _encode(self, pooled: torch.Tensor, grid: torch.Tensor | None):
        """Grid [B, L, D'] (embedded, D' = H, with `embed_features`; the pooled vector as a
        one-position grid if None), its attention projection [B, L, A] and the initial (h, c)
        [B, H] each. Runs once per image."""
        if grid is None:
            grid = pooled[:, None]  # [B, 1, D]: attention degenerates to the pooled vector
        grid = self.grid_embed(grid)  # [B, L, D']
        grid_att = self.attention.grid_proj(grid)  # [B, L, A]
        mean = grid.mean(dim=1)  # [B, D']
        return grid, grid_att, self.init_h(mean), self.init_c(mean)

    def _cell(self, emb, grid, grid_att, h, c):
        """One LSTM step: word embedding [B, E] and previous (h, c) -> new (h, c), α [B, L]."""
        context, alpha = self.attention(grid, grid_att, h)  # [B, D'], [B, L]
        if self.config.gate:
            # β lets the model turn the image down for words that need no looking ("a", "of").
            context = torch.sigmoid(self.f_beta(h)) * context
        h, c = self.lstm(torch.cat([emb, context], dim=-1), (h, c))
        return h, c, alpha

    def _run_sorted(self, encoded, tokens, lengths: list[int]):
        """The recurrence over captions sorted longest first -> h [B, T, H], α [B, T, L], zero
        after each caption's length. Same arithmetic as `_cell`, rearranged: the words' share
        of the LSTM input product is computed for all steps at once, and the three products of
        h (LSTM, attention query, β gate) are one matrix product per step."""
        cfg = self.config
        grid, grid_att, h, c = encoded  # [B, L, D], [B, L, A], [B, H] x2 (from `_encode`)
        w_ih, att = self.lstm.weight_ih, self.attention
        bias = self.lstm.bias_ih + self.lstm.bias_hh  # [4H]
        x_words = F.linear(self.embed(tokens.t()), w_ih[:, : cfg.embed_dim], bias).unbind()
        # x_words: T x [B, 4H], the words' share of every step's gates
        w_context = w_ih[:, cfg.embed_dim :]  # [4H, D]
        w_hh = self.lstm.weight_hh  # [4H, H]
        if cfg.weight_drop > 0 and self.training:
            w_hh = dropout(w_hh, cfg.weight_drop)
        parts = [
            (w_hh, torch.zeros_like(self.lstm.bias_hh)),  # [4H, H], [4H]
            (att.hidden_proj.weight, att.hidden_proj.bias),
        ]  # [A, H], [A]
        if cfg.gate:
            parts.append((self.f_beta.weight, self.f_beta.bias))  # [D, H], [D]
        w_h, b_h = torch.cat([w for w, _ in parts]), torch.cat([b for _, b in parts])
        w_h, b_h, w_context = cast_once(w_h, b_h, w_context)
        sizes = [w.shape[0] for w, _ in parts]
        running = running_counts(lengths)
        # One view per batch size, not per step: the backward of a slice fills a gradient of
        # the whole [B, L, A] with zeros, once per view.
        grid_att_views = {n: grid_att[:n] for n in set(running)}
        hs, alphas = [], []
        for n in running:  # recurrent: h_t needs h_{t-1}; n: captions still running, a prefix
            h, c = h[:n], c[:n]
            from_h = F.linear(h, w_h, b_h).split(sizes, dim=1)  # [n, 4H], [n, A] (, [n, D])
            e = att.score((grid_att_views[n] + from_h[1][:, None]).tanh_()).squeeze(-1)
            alpha = e.softmax(dim=-1)
            context = torch.bmm(alpha[:, None], grid[:n]).squeeze(1)  # [n, D]
            if cfg.gate:
                context = torch.sigmoid(from_h[2]) * context
            x = x_words[len(hs)][:n]  # [n, 4H]: this step's words
            h, c = lstm_update(torch.addmm(x + from_h[0], context, w_context.t()), c)
            hs.append(h)
            alphas.append(alpha)
        return stack_steps(hs, alphas, tokens.shape[1], cfg.hidden_dim, grid)

    def init_state(
        self, pooled: torch.Tensor, grid: torch.Tensor | None
    ) -> dict[str, torch.Tensor]:
        """Project the grid once; decoders expand these batch-first tensors with the beams."""
        grid, grid_att, h, c = self._encode(pooled, grid)
        return {"h": h, "c": c, "grid": grid, "grid_att": grid_att}

    def step(self, tokens: torch.Tensor, state: dict[str, torch.Tensor]) -> StepOutput:
        """One decoding step: tokens [B] -> logits [B, V], the new state and the attention
        [B, L] over the grid that predicted them."""
        h, c, alpha = self._cell(
            self.embed(tokens), state["grid"], state["grid_att"], state["h"], state["c"]
        )
        new_state = {**state, "h": h, "c": c}
        return StepOutput(self.head(self.dropout(h)), new_state, alpha)


def attention_regularizer(alpha: torch.Tensor, tokens: torch.Tensor, alpha_c: float):
    """Doubly stochastic attention: λ·Σ_l (1 − Σ_t α_tl)² for α [B, T, L] of the input tokens
    [B, T], averaged over the batch (as the cross-entropy is); it asks every position to be
    looked at about once over the caption. Steps reading <pad> or <eos> predict padding, which
    the loss ignores: so does the regulariser, or short captions would be pushed to attend where
    they never look."""
    mask = word_steps(tokens)  # [B, T]
    per_image = ((1.0 - (alpha * mask[..., None]).sum(dim=1)) ** 2).sum(dim=1)  # [B]
    return alpha_c * per_image.mean()


def word_embedding(vocab_size: int, embed_dim: int, dropout: float) -> nn.Module:
    """Word embedding, followed by ReLU and dropout when `dropout` > 0 (the reference's)."""
    embed = nn.Embedding(vocab_size, embed_dim, padding_idx=Vocabulary.pad_id)
    return nn.Sequential(embed, nn.ReLU(), Dropout(dropout)) if dropout > 0 else embed


def feature_embedding(feature_dim: int, hidden_dim: int, dropout: float, on: bool) -> nn.Module:
    """Features [.., D] -> [.., H] through Linear, ReLU, dropout; identity when off."""
    if not on:
        return nn.Identity()
    return nn.Sequential(nn.Linear(feature_dim, hidden_dim), nn.ReLU(), Dropout(dropout))


def word_steps(tokens: torch.Tensor) -> torch.Tensor:
    """Which steps of input tokens [B, T] read a word (<bos> included), not <pad> or <eos>."""
    return (tokens != Vocabulary.pad_id) & (tokens != Vocabulary.eos_id)


def running_lengths(tokens: torch.Tensor) -> torch.Tensor:
    """Steps each caption of tokens [B, T] needs: up to its last word step -> [B]."""
    mask = word_steps(tokens)
    positions = torch.arange(1, tokens.shape[1] + 1, device=tokens.device)
    return (mask * positions).amax(dim=1)


def running_counts(lengths: list[int]) -> list[int]:
    """For each step, how many of the captions of `lengths` (sorted longest first) still run: a
    prefix of the batch."""
    return [sum(length > t for length in lengths) for t in range(max(lengths, default=0))]


def cast_once(*weights: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """`weights` in autocast's dtype when autocast is on for their device, else as they are.
    Autocast casts a leaf weight once and reuses the copy for every step of a recurrence (its
    gradient summed in that dtype); the slices and concatenations of weights a recurrence reads
    are not leaves, and autocast would cast them again at every step, forward and backward."""
    device = weights[0].device.type
    if not torch.is_autocast_enabled(device):
        return weights
    dtype = torch.get_autocast_dtype(device)
    return tuple(w.to(dtype) for w in weights)


def lstm_update(gates: torch.Tensor, c: torch.Tensor):
    """nn.LSTMCell's update from its summed gate pre-activations [B, 4H] (order i, f, g, o) and
    the previous cell c [B, H] -> new (h, c) [B, H] each; for recurrences that compute the
    pre-activations themselves (fewer, larger matrix products than the cell's)."""
    i, f, g, o = gates.chunk(4, dim=1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


def stack_steps(
    hs: list[torch.Tensor],
    alphas: list[torch.Tensor],
    length: int,
    hidden_dim: int,
    grid: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A recurrence's outputs over captions sorted longest first, h [n_t, H] and α [n_t, L] at
    step t for the n_t captions still running (a prefix of the batch of grid [B, L, ..]) ->
    h [B, length, H] and α [B, length, L], zeros where a caption has ended."""
    (batch, positions), device = grid.shape[:2], grid.device
    return (
        _padded(hs, (batch, hidden_dim), length, device),
        _padded(alphas, (batch, positions), length, device),
    )


def _padded(steps: list[torch.Tensor], shape, length: int, device) -> torch.Tensor:
    """Per-step tensors [n_t, X] -> [B, length, X] for `shape` (B, X): zeros below each step's
    n_t rows and after the last step."""
    if not steps:
        return torch.zeros(shape[0], length, shape[1], device=device)
    rows = [F.pad(s, (0, 0, 0, shape[0] - s.shape[0])) for s in steps]  # [B, X] each
    out = torch.stack(rows, dim=1)  # [B, t, X]
    return F.pad(out, (0, 0, 0, length - out.shape[1]))
