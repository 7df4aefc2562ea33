"""The callbacks of a training run: metrics and the best model after each validation, early
stopping, the position in the data and the `last` training state for resuming, a tidier progress
bar, and the counts Lightning's throughput monitor needs."""

from __future__ import annotations

import json
import time
from pathlib import Path

import lightning as L
from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.pytorch.callbacks import EarlyStopping, RichProgressBar, TQDMProgressBar

from captionkit.data.tokenizers import Tokenizer
from captionkit.data.vocab import Vocabulary
from captionkit.encoders import ImageEncoder
from captionkit.models.run_folder import save_checkpoint
from captionkit.training.feature_batches import ResumableDataModule
from captionkit.training.module import CaptioningModule
from captionkit.training.resume_checkpoints import BEST, CHECKPOINTS


class BestCheckpoint(L.Callback):
    """After each validation: append to `metrics.jsonl`; if val CIDEr improved (or the model is
    the mean of the run's last epochs, `optim.average_last`: every time), export the model
    (`model.safetensors` + `config.json`) and save the training state as
    `checkpoints/best.safetensors`.

    With `finetuned` (an encoder trained by this run or by its `--init` run), the encoder is
    saved too, and its spec says so, with the fingerprint of its current weights."""

    def __init__(
        self,
        run_dir: Path,
        model_name: str,
        tokenizer: Tokenizer,
        encoder: dict,
        extra: dict,
        finetuned: ImageEncoder | None = None,
    ):
        self.run_dir, self.model_name, self.tokenizer = run_dir, model_name, tokenizer
        self.encoder, self.extra, self.finetuned = encoder, extra, finetuned
        self.best: dict = {}
        self.rows = 0  # lines of metrics.jsonl written, kept in checkpoints for resuming
        self.elapsed_before = 0.0  # seconds trained before a resume
        self.started = time.perf_counter()

    def state_dict(self) -> dict:
        elapsed = self.elapsed_before + time.perf_counter() - self.started
        return {"best": self.best, "rows": self.rows, "elapsed_s": elapsed}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.rows, self.elapsed_before = state["best"], state["rows"], state["elapsed_s"]
        self.started = time.perf_counter()
        # Validations after the checkpoint will run again: drop the lines they wrote.
        path = self.run_dir / "metrics.jsonl"
        if rank_zero_only.rank == 0 and path.exists():
            lines = path.read_text().splitlines(keepends=True)[: self.rows]
            path.write_text("".join(lines))

    def on_validation_end(self, trainer: L.Trainer, module: CaptioningModule) -> None:
        if trainer.sanity_checking or "val/CIDEr" not in trainer.callback_metrics:
            return
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k != "cap/s"}
        row = {"epoch": trainer.current_epoch, "step": trainer.global_step, **metrics}
        row["elapsed_s"] = round(self.elapsed_before + time.perf_counter() - self.started, 2)
        if module.averaging:  # the model validated is the mean of this many epochs' weights
            row["averaged_epochs"] = int(module.mean_count)
        self.rows += 1
        if trainer.is_global_zero:
            with open(self.run_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps(row) + "\n")
        # With `optim.average_last`, the mean of the last epochs' weights: always the latest.
        improved = not self.best or row["val/CIDEr"] > self.best["val/CIDEr"]
        if improved or module.averaging:
            self.best = row
            if trainer.is_global_zero:
                self._export(module)
            # every rank takes part; weights_only=False: the whole training state
            trainer.save_checkpoint(self.run_dir / CHECKPOINTS / BEST, weights_only=False)

    def _export(self, module: CaptioningModule) -> None:
        spec, encoder_model = self.encoder, None
        if self.finetuned is not None:
            spec = {
                **spec,
                "fingerprint": self.finetuned.fingerprint(),
                "finetuned": True,
                "base_fingerprint": self.encoder["fingerprint"],
            }
            encoder_model = self.finetuned.model
        save_checkpoint(
            self.run_dir,
            module.kept_model,
            self.model_name,
            self.tokenizer,
            spec,
            {**self.extra, "metrics": self.best},
            encoder_model,
        )


class DataPosition(L.Callback):
    """Where training is in the data (epoch, batches done), kept in checkpoints so that a
    resumed run goes on with the batches the uninterrupted run would have trained next."""

    def __init__(self, datamodule: ResumableDataModule):
        self.datamodule, self.position = datamodule, (0, 0)

    def on_train_epoch_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        # Lightning calls `set_epoch` on a DataLoader's sampler, not on its batch sampler, which
        # is what shuffles here: without this every epoch would see the batches of the first.
        trainer.train_dataloader.batch_sampler.set_epoch(trainer.current_epoch)
        self.datamodule.set_epoch(trainer.current_epoch)  # e.g. the epoch's feature views

    def on_train_batch_end(self, trainer: L.Trainer, *args) -> None:
        done = args[-1] + 1  # batch_idx + 1, counted from the epoch's start also after a resume
        epoch = trainer.current_epoch
        self.position = (epoch, done) if done < trainer.num_training_batches else (epoch + 1, 0)

    def state_dict(self) -> dict:
        return {"epoch": self.position[0], "batches_done": self.position[1]}

    def load_state_dict(self, state: dict) -> None:
        self.position = (state["epoch"], state["batches_done"])
        self.datamodule.resume = self.position


class ValEarlyStopping(EarlyStopping):
    """Stop when val CIDEr has not improved for `patience` validations.

    Lightning's own, with two changes for resuming. It checks right after each validation, not
    at the end of the training epoch: `LastCheckpoint` saves then (after this callback, which
    comes first), so the saved count is up to date, and a run resumed from that checkpoint
    finishes its epoch with nothing to check; at the epoch's end it found no val CIDEr yet and
    failed. And a resumed run keeps the patience of its config (`--resume RUN --patience N`
    lets an early-stopped run go on) where Lightning restores the checkpoint's."""

    def __init__(self, patience: int):
        super().__init__("val/CIDEr", mode="max", patience=patience, check_on_train_epoch_end=False)

    def load_state_dict(self, state_dict: dict) -> None:
        patience = self.patience
        super().load_state_dict(state_dict)
        self.patience = patience


class LastCheckpoint(L.Callback):
    """Saves the whole training state as `checkpoints/last.safetensors` after each validation and
    every `every` optimizer steps (never in the middle of a gradient accumulation)."""

    def __init__(self, path: Path, every: int, accumulate: int):
        self.path, self.every, self.accumulate = path, every, accumulate
        self.saved_step = -1

    def save(self, trainer: L.Trainer) -> None:
        trainer.save_checkpoint(self.path, weights_only=False)
        self.saved_step = trainer.global_step

    def on_train_batch_end(self, trainer: L.Trainer, *args) -> None:
        step, batch_idx = trainer.global_step, args[-1]
        if (
            self.every
            and step % self.every == 0
            and step != self.saved_step
            and (batch_idx + 1) % self.accumulate == 0
        ):
            self.save(trainer)

    def on_validation_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self.save(trainer)


class _NoVersion:
    """Progress bars without Lightning's `v_num` (our logs have no numbered versions)."""

    def get_metrics(self, trainer: L.Trainer, module: L.LightningModule) -> dict:
        items = super().get_metrics(trainer, module)
        items.pop("v_num", None)
        return items


class RichBar(_NoVersion, RichProgressBar):
    pass


class TqdmBar(_NoVersion, TQDMProgressBar):
    pass


def captions_in(batch: dict) -> int:
    return len(batch["tokens"]) if "tokens" in batch else len(batch.get("keys", ()))


def target_tokens_in(batch: dict) -> int:
    """Tokens a training batch predicts; for a validation batch, its images (the monitor wants
    at least one item per sample)."""
    tokens = batch.get("tokens")
    if tokens is None:
        return len(batch.get("keys", ()))
    return int((tokens[:, 1:] != Vocabulary.pad_id).sum())
