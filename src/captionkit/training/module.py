"""The LightningModule: teacher-forced cross-entropy for training, real decoding for validation."""

from __future__ import annotations

import copy
import time
from typing import NamedTuple

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from captionkit.data.vocab import Vocabulary
from captionkit.decoding import DecodingOptions, decode
from captionkit.encoders.factory import ImageEncoder
from captionkit.metrics.coco_metrics import quick_metrics
from captionkit.models.attention import attention_regularizer
from captionkit.training.config import OptimConfig
from captionkit.training.feature_batches import derived_seed
from captionkit.training.scheduled_sampling import scheduled_sampling_inputs, ss_probability
from captionkit.training.schedules import configure_optimization, needs_run_length


def feature_arguments(
    model: nn.Module,
    pooled: torch.Tensor,
    grid: torch.Tensor | None,
    image_index: torch.Tensor | None = None,
    share: bool = True,
) -> tuple[tuple, dict]:
    """A training batch's features as `model`'s forward takes them: `((pooled, grid), keywords)`.
    With `image_index` [B] (a batch of whole images, features [I, ...] per image), models that
    share an image's work among its captions (`shares_images`) get it as a keyword when `share`;
    other models, or `share=False`, get the features repeated per caption [B, ...]."""
    if image_index is None:
        return (pooled, grid), {}
    if share and model.shares_images:
        return (pooled, grid), {"image_index": image_index}
    return (pooled[image_index], None if grid is None else grid[image_index]), {}


class CaptioningModule(L.LightningModule):
    """Trains any registered caption model; validation decodes and scores CIDEr.

    Batches carry cached features (`pooled`, `grid`), or, with an `encoder` to fine-tune, images
    that it encodes (its trainable weights get their own learning rate, `encoder_lr`)."""

    def __init__(
        self,
        model: nn.Module,
        vocab: Vocabulary,
        optim: OptimConfig,
        val_references: dict[str, list[str]],
        val_options: DecodingOptions,
        encoder: ImageEncoder | None = None,
        encoder_lr: float = 1e-4,
        seed: int = 0,
    ):
        super().__init__()
        self.seed = seed
        self.model, self.vocab, self.optim = model, vocab, optim
        self.val_references, self.val_options = val_references, val_options
        self.encoder, self.encoder_lr = encoder, encoder_lr
        self._val_predictions: dict[str, str] = {}
        self._last_batch_end: float | None = None
        self._rate: float | None = None
        # The averages are submodules (and buffers): checkpoints, so resumed runs, carry them.
        self.ema_model = copy.deepcopy(model).requires_grad_(False) if optim.ema > 0 else None
        self.mean_model = None
        if optim.average_last > 0:
            self.mean_model = copy.deepcopy(model).requires_grad_(False)
            # epochs in the mean, and the last of them (-1: none yet)
            self.register_buffer("mean_count", torch.tensor(0))
            self.register_buffer("mean_epoch", torch.tensor(-1))

    @property
    def kept_model(self) -> nn.Module:
        """The model that validation decodes and the run exports: the mean of the weights over
        the last epochs once it has begun (`optim.average_last`), else the weights' moving
        average (`optim.ema`), or the weights themselves."""
        if self.averaging:
            return self.mean_model
        return self.model if self.ema_model is None else self.ema_model

    @property
    def averaging(self) -> bool:
        """Whether the kept model is the mean of the weights over the run's last epochs."""
        return self.mean_model is not None and int(self.mean_count) > 0

    def on_validation_epoch_start(self) -> None:
        # Each epoch's weights join the mean before its validation (which then decodes the mean),
        # once: a run resumed after a validation does not count that epoch again.
        if self.mean_model is None or self.trainer.sanity_checking:
            return
        epoch, start = self.current_epoch, self.trainer.max_epochs - self.optim.average_last
        if epoch < start or epoch <= int(self.mean_epoch):
            return
        source = self.model if self.ema_model is None else self.ema_model
        self.mean_count += 1
        averaged, current = list(self.mean_model.parameters()), list(source.parameters())
        torch._foreach_lerp_(averaged, current, 1.0 / int(self.mean_count))
        for a, b in zip(self.mean_model.buffers(), source.buffers()):
            a.copy_(b)
        self.mean_epoch.fill_(epoch)

    def optimizer_step(self, *args, **kwargs) -> None:
        super().optimizer_step(*args, **kwargs)
        if self.ema_model is not None:
            step = self.trainer.global_step  # optimizer steps before this one
            decay = min(self.optim.ema, (1 + step) / (10 + step))
            averaged, current = list(self.ema_model.parameters()), list(self.model.parameters())
            torch._foreach_lerp_(averaged, current, 1 - decay)
            for a, b in zip(self.ema_model.buffers(), self.model.buffers()):
                a.copy_(b)  # e.g. BatchNorm statistics: the current ones

    def on_train_start(self) -> None:
        # Lightning keeps each module's mode, and the encoder comes in eval mode (it extracted
        # features before). Its train() reaches only the trainable blocks.
        if self.encoder is not None:
            self.encoder.train()

    def on_train_batch_start(self, batch: dict, batch_idx: int) -> None:
        # Dropout (and any sampling) of each batch draws from a generator seeded by the batch's
        # place in the run, not by all the draws before it: a run resumed from a checkpoint
        # draws what the uninterrupted run drew, with no generator state to save.
        torch.manual_seed(derived_seed(self.seed, self.current_epoch, batch_idx, self.global_rank))

    def on_train_batch_end(self, outputs, batch: dict, batch_idx: int) -> None:
        # Captions per second for the progress bar (data loading included), smoothed; the logs
        # get Lightning's ThroughputMonitor figures.
        now, last = time.perf_counter(), self._last_batch_end
        self._last_batch_end = now
        if last is None or "tokens" not in batch:
            return
        rate = batch["tokens"].shape[0] / max(now - last, 1e-9)
        self._rate = rate if self._rate is None else 0.9 * self._rate + 0.1 * rate
        self.log("cap/s", self._rate, prog_bar=True, logger=False)

    def _features(self, batch: dict, per_caption: bool = True):
        """`(pooled [B, D], grid [B, L, D] | None)`, one row per caption (training) or image;
        with `per_caption=False`, a batch of whole images keeps one row per image [I, ...]."""
        if self.encoder is None:
            pooled, grid = batch["pooled"], batch["grid"]
        else:
            pooled, grid = self.encoder(batch["images"])  # [I, D], [I, L, D]
            grid = grid if self.model.uses_grid else None
        if not per_caption:
            return pooled, grid
        return feature_arguments(self.model, pooled, grid, batch.get("image_index"), False)[0]

    def _training_features(self, batch: dict) -> tuple[tuple, dict]:
        """The model's feature arguments and keywords for a training batch (`feature_arguments`;
        scheduled sampling's extra pass takes features per caption)."""
        share = self.optim.scheduled_sampling == 0
        pooled, grid = self._features(batch, per_caption=False)
        return feature_arguments(self.model, pooled, grid, batch.get("image_index"), share)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor | None:
        if "tokens" not in batch:  # every image of the batch became unreadable during the run
            return None
        tokens = batch["tokens"]  # [B, T]: <bos> w1 .. wn <eos> <pad>..
        (features, shared), inputs = self._training_features(batch), tokens[:, :-1]  # [B, T-1]
        if self.optim.scheduled_sampling > 0:
            p = ss_probability(self.optim, self.current_epoch)
            inputs = scheduled_sampling_inputs(self.model, *features, inputs, p)
            self.log("train/ss_prob", p, batch_size=tokens.shape[0])
        weights = batch.get("weights")  # [B] or None
        tf = teacher_forcing_loss(self.model, features, shared, tokens, inputs, self.optim, weights)
        loss = self._global_token_mean(tf.xe, tf.targets, weights)
        if tf.regularizer is not None:
            # The cross-entropy alone too: the regulariser can be larger than it.
            self.log("train/xe", loss, batch_size=tokens.shape[0])
            loss = loss + tf.regularizer
        self.log("train/loss", loss, prog_bar=True, batch_size=tokens.shape[0])
        return loss

    def _global_token_mean(
        self, loss: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Under DDP, this rank's token mean rescaled so that the gradients DDP averages over the
        ranks are those of the mean over all the ranks' tokens: the same as one process with
        the whole global batch, whatever the share of padding on each rank (with caption
        `weights` [B], of the weighted mean, tokens counted by their captions' weights)."""
        world = self.trainer.world_size
        if world == 1:
            return loss
        n_local = token_weights(targets, weights).sum()
        n_global = self.trainer.strategy.reduce(n_local.clone(), reduce_op="sum")
        return loss * n_local * world / n_global

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        if "keys" not in batch:
            return
        results = decode(self.kept_model, *self._features(batch), self.val_options)
        for key, hyps in zip(batch["keys"], results):
            self._val_predictions[key] = self.vocab.decode(hyps[0].tokens)

    def on_validation_epoch_end(self) -> None:
        predictions = self._val_predictions
        if self.trainer.world_size > 1:  # every rank decoded its share: score them all
            shares = [None] * self.trainer.world_size
            torch.distributed.all_gather_object(shares, predictions)
            predictions = {k: v for share in shares for k, v in share.items()}
        if predictions:
            scores = quick_metrics(predictions, self.val_references)
            # The same numbers on every rank; sync_dist only keeps Lightning from warning.
            self.log("val/CIDEr", scores["CIDEr"], prog_bar=True, sync_dist=True)
            self.log("val/BLEU-4", scores["BLEU-4"], sync_dist=True)
            self.log("val/images", float(len(predictions)), sync_dist=True)
        self._val_predictions = {}

    def configure_optimizers(self):
        groups = [{"params": list(self.model.parameters())}]
        if self.encoder is not None:
            trainable = [p for p in self.encoder.parameters() if p.requires_grad]
            groups.append({"params": trainable, "lr": self.encoder_lr})
        steps, epochs = 0, 1
        if needs_run_length(self.optim):  # else spare Lightning loading the data to count steps
            steps, epochs = int(self.trainer.estimated_stepping_batches), self.trainer.max_epochs
        scaling = self.trainer.precision == "16-mixed"  # the one precision with a GradScaler
        return configure_optimization(self.optim, groups, steps, epochs, scaling)

    def configure_gradient_clipping(
        self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None
    ) -> None:
        """Lightning's clipping, done here: its mixed-precision plugin refuses any optimizer
        that unscales gradients itself (a fused one), although bf16 scales none, and under
        16-mixed, which does, `make_optimizer` fuses nothing (the plugin unscales first)."""
        if not gradient_clip_val:
            return
        params = [p for group in optimizer.param_groups for p in group["params"]]
        if gradient_clip_algorithm == "value":
            torch.nn.utils.clip_grad_value_(params, gradient_clip_val)
        else:
            torch.nn.utils.clip_grad_norm_(params, gradient_clip_val)


class TeacherForcing(NamedTuple):
    """One teacher-forced pass: the cross-entropy, the attention regulariser (None for a model
    without one) and the targets [B, T-1] the cross-entropy read."""

    xe: torch.Tensor
    regularizer: torch.Tensor | None
    targets: torch.Tensor


def teacher_forcing_loss(
    model: nn.Module,
    features: tuple,
    shared: dict,
    tokens: torch.Tensor,
    inputs: torch.Tensor,
    optim: OptimConfig,
    weights: torch.Tensor | None = None,
) -> TeacherForcing:
    """The training loss of `model` on captions `tokens` [B, T] (<bos> .. <eos> <pad>..) fed
    `inputs` [B, T-1] (`tokens[:, :-1]`, or scheduled sampling's mix): the cross-entropy of
    `optim` (label smoothing, `<unk>` targets kept or skipped, caption `weights` [B]) and, for an
    attention model with `alpha_c`, the doubly stochastic regulariser over its attention."""
    regularized = model.attends and model.config.alpha_c > 0
    targets = tokens[:, 1:]  # [B, T-1]
    if not optim.unk_targets:
        targets = targets.masked_fill(targets == Vocabulary.unk_id, Vocabulary.pad_id)
    steps = loss_steps(model, targets)
    extra = {"return_attention": True} if regularized else {}
    out = model(*features, inputs, **shared, **extra, **steps)
    logits = out[0] if regularized else out  # [B, T-1, V], or [n, V] at `steps`
    xe = caption_loss(logits, targets, optim.label_smoothing, weights, **steps)
    regularizer = (
        attention_regularizer(out[1], inputs, model.config.alpha_c) if regularized else None
    )
    return TeacherForcing(xe, regularizer, targets)


def loss_steps(model, targets: torch.Tensor) -> dict:
    """`{"steps": [B, T]}`, the steps whose targets [B, T] are not padding, for a model that
    computes the logits of just those (`selects_steps`); else {}."""
    return {"steps": targets != Vocabulary.pad_id} if model.selects_steps else {}


def caption_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    label_smoothing: float = 0.0,
    weights: torch.Tensor | None = None,
    steps: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean cross-entropy of logits [B, T, V] against targets [B, T] over non-padding tokens;
    with caption `weights` [B], the mean over tokens each weighted by its caption's weight. With
    `steps` [B, T] (bool), `logits` [n, V] are those of just these steps (row-major)."""
    pick = (lambda x: x.reshape(-1)) if steps is None else (lambda x: x[steps])
    loss = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]),
        pick(targets),
        ignore_index=Vocabulary.pad_id,
        label_smoothing=label_smoothing,
        reduction="mean" if weights is None else "none",
    )  # a scalar, or one per token with 0 at padding when weighted
    if weights is None:
        return loss
    per_token = pick(token_weights(targets, weights))
    return (loss * per_token).sum() / per_token.sum().clamp_min(1e-12)


def token_weights(targets: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Each target token's share of the loss [B, T]: 0 at padding, else 1 or, with caption
    `weights` [B], its caption's weight."""
    real = (targets != Vocabulary.pad_id).float()  # [B, T]
    return real if weights is None else real * weights[:, None]
