"""The LightningModule: teacher-forced cross-entropy for training, real decoding for validation."""

from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from captionkit.data.vocab import Vocabulary
from captionkit.decoding import DecodingOptions, decode
from captionkit.evaluation.metrics import quick_cider
from captionkit.training.config import OptimConfig


class CaptioningModule(L.LightningModule):
    """Trains any registered caption model; validation decodes and scores CIDEr."""

    def __init__(self, model: nn.Module, vocab: Vocabulary, optim: OptimConfig,
                 val_references: dict[str, list[str]], val_options: DecodingOptions):  # fmt: skip
        super().__init__()
        self.model, self.vocab, self.optim = model, vocab, optim
        self.val_references, self.val_options = val_references, val_options
        self._val_predictions: dict[str, str] = {}

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        tokens = batch["tokens"]  # [B, T]: <bos> w1 .. wn <eos> <pad>..
        logits = self.model(batch["pooled"], batch["grid"], tokens[:, :-1])  # [B, T-1, V]
        loss = F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]),
            tokens[:, 1:].reshape(-1),
            ignore_index=Vocabulary.pad_id,
        )
        if hasattr(self.model, "regularization_loss"):  # e.g. doubly stochastic attention
            loss = loss + self.model.regularization_loss()
        self.log("train/loss", loss, prog_bar=True, batch_size=tokens.shape[0])
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        results = decode(self.model, batch["pooled"], batch["grid"], self.val_options)
        for key, hyps in zip(batch["keys"], results):
            self._val_predictions[key] = self.vocab.decode(hyps[0].tokens)

    def on_validation_epoch_end(self) -> None:
        if self._val_predictions:
            cider = quick_cider(self._val_predictions, self.val_references)
            self.log("val/CIDEr", cider, prog_bar=True)
        self._val_predictions = {}

    def configure_optimizers(self):
        return torch.optim.Adam(
            self.model.parameters(), lr=self.optim.lr, weight_decay=self.optim.weight_decay
        )
