"""`train()`: dataset -> features -> vocabulary -> model -> Lightning Trainer -> run folder."""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path

import lightning as L
from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.pytorch.callbacks import (
    EarlyStopping,
    RichProgressBar,
    ThroughputMonitor,
    TQDMProgressBar,
)
from lightning.pytorch.callbacks.progress.rich_progress import _RICH_AVAILABLE
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from torch import nn

from captionkit.data import load_dataset
from captionkit.data.formats import write_splits
from captionkit.data.problems import Problems
from captionkit.data.tokenizers import Tokenizer, build_tokenizer, tokenizer_from_dict
from captionkit.data.vocab import Vocabulary
from captionkit.decoding import DecodingOptions
from captionkit.encoders import ImageEncoder, create_encoder
from captionkit.encoders.features import features_for_dataset
from captionkit.encoders.finetune import augmenting_transform, unfreeze_last_blocks
from captionkit.errors import CaptionkitError
from captionkit.models import MODELS, create_model, model_config_dict
from captionkit.models.checkpoint import TrainedModel, load_checkpoint, save_checkpoint
from captionkit.training.checkpointing import BEST, CHECKPOINTS, LAST, SafetensorsCheckpointIO
from captionkit.training.config import RunConfig
from captionkit.training.datamodule import (
    CaptionDataModule,
    CaptionPairs,
    ImageRows,
    ResumableDataModule,
)
from captionkit.training.image_data import CaptionedImages, ImageDataModule
from captionkit.training.module import CaptioningModule


class BestCheckpoint(L.Callback):
    """After each validation: append to `metrics.jsonl`; if val CIDEr improved, export the model
    (`model.safetensors` + `config.json`) and save the training state as
    `checkpoints/best.safetensors`.

    With `finetuned` (an encoder trained by this run or by its `--init` run), the encoder is
    saved too, and its spec says so, with the fingerprint of its current weights."""

    def __init__(self, run_dir: Path, model_name: str, vocab: Tokenizer, encoder: dict,
                 extra: dict, finetuned: ImageEncoder | None = None):  # fmt: skip
        self.run_dir, self.model_name, self.vocab = run_dir, model_name, vocab
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
        self.rows += 1
        if trainer.is_global_zero:
            with open(self.run_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps(row) + "\n")
        if not self.best or row["val/CIDEr"] > self.best["val/CIDEr"]:
            self.best = row
            if trainer.is_global_zero:
                self._export(module)
            # every rank takes part; weights_only=False: the whole training state
            trainer.save_checkpoint(self.run_dir / CHECKPOINTS / BEST, weights_only=False)

    def _export(self, module: CaptioningModule) -> None:
        spec, encoder_model = self.encoder, None
        if self.finetuned is not None:
            spec = {**spec, "fingerprint": self.finetuned.fingerprint(), "finetuned": True,
                    "base_fingerprint": self.encoder["fingerprint"]}  # fmt: skip
            encoder_model = self.finetuned.model
        save_checkpoint(self.run_dir, module.model, self.model_name, self.vocab, spec,
                        {**self.extra, "metrics": self.best}, encoder_model)  # fmt: skip


class DataPosition(L.Callback):
    """Where training is in the data (epoch, batches done), kept in checkpoints so that a
    resumed run goes on with the batches the uninterrupted run would have trained next."""

    def __init__(self, datamodule: ResumableDataModule):
        self.datamodule, self.position = datamodule, (0, 0)

    def on_train_epoch_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        # Lightning calls `set_epoch` on a DataLoader's sampler, not on its batch sampler, which
        # is what shuffles here: without this every epoch would see the batches of the first.
        trainer.train_dataloader.batch_sampler.set_epoch(trainer.current_epoch)

    def on_train_batch_end(self, trainer: L.Trainer, *args) -> None:
        done = args[-1] + 1  # batch_idx + 1, counted from the epoch's start also after a resume
        epoch = trainer.current_epoch
        self.position = (epoch, done) if done < trainer.num_training_batches else (epoch + 1, 0)

    def state_dict(self) -> dict:
        return {"epoch": self.position[0], "batches_done": self.position[1]}

    def load_state_dict(self, state: dict) -> None:
        self.position = (state["epoch"], state["batches_done"])
        self.datamodule.resume = self.position


class LastCheckpoint(L.Callback):
    """Saves the whole training state as `checkpoints/last.safetensors` after each validation and
    every `every` optimizer steps (never in the middle of a gradient accumulation)."""

    def __init__(self, path: Path, every: int, accumulate: int):
        self.path, self.every, self.accumulate = path, every, accumulate
        self.saved_step = -1

    def _save(self, trainer: L.Trainer) -> None:
        trainer.save_checkpoint(self.path, weights_only=False)
        self.saved_step = trainer.global_step

    def on_train_batch_end(self, trainer: L.Trainer, *args) -> None:
        step, batch_idx = trainer.global_step, args[-1]
        if (self.every and step % self.every == 0 and step != self.saved_step
                and (batch_idx + 1) % self.accumulate == 0):  # fmt: skip
            self._save(trainer)

    def on_validation_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._save(trainer)


def _train_tokens(config: RunConfig, vocab: Tokenizer, train_records):
    """Token ids of each training image's captions, and how many were cut to `max_length`."""
    tokens, truncated = [], 0
    for r in train_records:
        encoded = [vocab.encode_with_info(c, config.data.max_length) for c in r.captions]
        tokens.append([ids for ids, _ in encoded])
        truncated += sum(cut for _, cut in encoded)
    limit = f"{config.data.max_length} {'words' if config.data.tokenizer == 'word' else 'tokens'}"
    print(f"truncated {truncated} of {sum(map(len, tokens))} training captions to {limit}")
    return tokens, truncated


def _datamodule(config: RunConfig, store, dataset, train_records, val_records, vocab, use_grid,
                run_dir: Path):  # fmt: skip
    """Training pairs (one per caption) and validation images over the feature store, and how
    many training captions were cut to `max_length` tokens."""
    pairs = [(dataset.path(r), c) for r in train_records for c in r.captions]
    per_image, truncated = _train_tokens(config, vocab, train_records)
    tokens = [ids for image_tokens in per_image for ids in image_tokens]
    train_set = CaptionPairs(store, store.rows([p for p, _ in pairs]), tokens, use_grid,
                             token_file=run_dir / "train_tokens.npy")  # fmt: skip
    val_rows = store.rows([dataset.path(r) for r in val_records])
    val_set = ImageRows(store, val_rows, [r.filename for r in val_records], use_grid)
    datamodule = CaptionDataModule(train_set, val_set, config.train.batch_size, config.train.seed,
                                   config.train.bucket_batches)  # fmt: skip
    return datamodule, truncated


class _NoVersion:
    """Progress bars without Lightning's `v_num` (our logs have no numbered versions)."""

    def get_metrics(self, trainer: L.Trainer, module: L.LightningModule) -> dict:
        items = super().get_metrics(trainer, module)
        items.pop("v_num", None)
        return items


class _RichBar(_NoVersion, RichProgressBar):
    pass


class _TqdmBar(_NoVersion, TQDMProgressBar):
    pass


def _captions(batch: dict) -> int:
    return len(batch["tokens"]) if "tokens" in batch else len(batch.get("keys", ()))


def _target_tokens(batch: dict) -> int:
    """Tokens a training batch predicts; for a validation batch, its images (the monitor wants
    at least one item per sample)."""
    tokens = batch.get("tokens")
    if tokens is None:
        return len(batch.get("keys", ()))
    return int((tokens[:, 1:] != Vocabulary.pad_id).sum())


def _trainer(config: RunConfig, run_dir: Path, callbacks: list[L.Callback]) -> L.Trainer:
    t = config.train
    if t.patience > 0:  # first: the checkpoints saved after a validation hold its updated count
        callbacks = [EarlyStopping("val/CIDEr", mode="max", patience=t.patience), *callbacks]
    # Logs train|samples_per_sec (captions), train|items_per_sec (target tokens) and batches/s.
    callbacks = [
        _RichBar() if _RICH_AVAILABLE else _TqdmBar(),
        *callbacks,
        ThroughputMonitor(batch_size_fn=_captions, length_fn=_target_tokens, window_size=10),
    ]
    return L.Trainer(
        max_epochs=t.epochs,
        accelerator=t.accelerator,
        devices=t.devices,
        num_nodes=t.num_nodes,
        strategy=t.strategy,
        # The data modules give each rank its share themselves (a length-bucketing batch sampler
        # that Lightning could not wrap).
        use_distributed_sampler=False,
        precision=t.precision,
        deterministic=t.deterministic or None,
        gradient_clip_val=config.optim.grad_clip or None,
        gradient_clip_algorithm=config.optim.grad_clip_algorithm,
        accumulate_grad_batches=config.optim.accumulate,
        callbacks=callbacks,
        logger=[
            CSVLogger(run_dir, name="logs", version="csv"),
            TensorBoardLogger(run_dir, name="logs", version="tensorboard", default_hp_metric=False),
        ],  # fmt: skip
        # No ModelCheckpoint: LastCheckpoint and BestCheckpoint save through our safetensors IO.
        enable_checkpointing=False,
        plugins=[SafetensorsCheckpointIO()],
        num_sanity_val_steps=0,
        enable_model_summary=False,
        log_every_n_steps=10,
    )


def _image_datamodule(config: RunConfig, encoder: ImageEncoder, dataset, train_records,
                      val_records, vocab: Tokenizer):  # fmt: skip
    """Fine-tuning: training images (augmented, each with all its captions) and validation images,
    decoded on the fly; and how many training captions were cut to `max_length` tokens."""
    tokens, truncated = _train_tokens(config, vocab, train_records)
    augment = augmenting_transform(encoder, config.encoder.crop_scale_min, config.encoder.hflip)
    train_set = CaptionedImages([dataset.path(r) for r in train_records], augment, tokens=tokens,
                                seed=config.train.seed)  # fmt: skip
    val_set = CaptionedImages([dataset.path(r) for r in val_records], encoder.transform(),
                              keys=[r.filename for r in val_records])  # fmt: skip
    captions_per_image = sum(map(len, tokens)) / len(tokens)
    images_per_batch = max(1, round(config.train.batch_size / captions_per_image))
    datamodule = ImageDataModule(train_set, val_set, images_per_batch, config.train.seed,
                                 config.train.workers)  # fmt: skip
    return datamodule, truncated


def _load_init(config: RunConfig) -> TrainedModel | None:
    """The run named by `train.init`, refused if its model or encoder is another one."""
    if not config.train.init:
        return None
    init = load_checkpoint(config.train.init)
    model_name, encoder_name = init.config["model"]["name"], init.encoder["name"]
    if model_name != config.model:
        raise CaptionkitError(f"--init {config.train.init}: its model is {model_name}, "
                              f"not {config.model} (--model)")  # fmt: skip
    if encoder_name != config.encoder.name:
        raise CaptionkitError(f"--init {config.train.init}: its encoder is {encoder_name}, "
                              f"not {config.encoder.name} (--encoder)")  # fmt: skip
    return init


def _encoder(config: RunConfig, init: TrainedModel | None) -> ImageEncoder:
    """The `--init` run's encoder (fine-tuned or not) or a new one; when fine-tuning, with its last
    blocks trainable (checked before any feature is extracted)."""
    if init is not None:
        from captionkit.evaluation.evaluate import encoder_for

        encoder = encoder_for(init)
    else:
        encoder = create_encoder(config.encoder.name, config.encoder.weights)
    if config.encoder.finetune:
        unfreeze_last_blocks(encoder, config.encoder.finetune_blocks)
    return encoder


def _model(config: RunConfig, vocab: Tokenizer, encoder: ImageEncoder,
           init: TrainedModel | None) -> nn.Module:  # fmt: skip
    """A new model, or one with the `--init` run's weights (the same settings are required)."""
    model = create_model(config.model, vocab_size=len(vocab), feature_dim=encoder.feature_dim,
                         **config.model_args)  # fmt: skip
    if init is not None:
        ours, theirs = model_config_dict(model), init.config["model"]["config"]
        differ = [k for k in sorted(ours.keys() | theirs.keys()) if ours.get(k) != theirs.get(k)]
        if differ:
            changes = ", ".join(f"{k} {theirs.get(k)} there, {ours.get(k)} here" for k in differ)
            raise CaptionkitError(f"--init {config.train.init}: other model settings ({changes})")
        model.load_state_dict(init.model.state_dict())
    return model


def _load_data(config: RunConfig, run_dir: Path, init: TrainedModel | None):
    """Dataset, encoder and features; the split and every problem found go into the run folder.
    Fine-tuning reads images, not features, but the feature pass (a cache hit after a run on
    the same data) is what finds the unusable images."""
    problems = Problems(strict=config.data.strict)
    dataset = load_dataset(config.data.data, config.data.images, problems=problems)
    if rank_zero_only.rank == 0:
        write_splits(dataset, run_dir / "splits.json")  # evaluation reuses these test images
    encoder = _encoder(config, init)
    store, records = features_for_dataset(dataset, encoder, config.data.cache_dir)
    if problems.items and rank_zero_only.rank == 0:
        problems.write(run_dir / "problems.json")
        print(f"{problems.summary()} (listed in {run_dir / 'problems.json'})")
    train_records = [r for r in records if r.split == "train"]
    val_records = [r for r in records if r.split == "val"]
    if not train_records or not val_records:
        raise CaptionkitError(f"{dataset.source}: need images in both the train and val splits")
    return dataset, encoder, store, train_records, val_records


# Settings a resumed run may change: how long and on what it trains, not what it trains.
RESUMABLE_CHANGES = ("train", "optim")


def _flat(settings: dict, prefix: str = "") -> dict:
    """`{"optim": {"lr": 1}}` -> `{"optim.lr": 1}` (model_args stays one setting)."""
    flat = {}
    for key, value in settings.items():
        if isinstance(value, dict) and key != "model_args":
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return flat


def _resumed_config(config: RunConfig, run_dir: Path) -> None:
    """Check `config` against the run's own `config.yaml`: the model, data and encoder must be
    the same; changed training settings (e.g. more epochs) are listed and kept."""
    saved = _flat(RunConfig.from_yaml(run_dir / "config.yaml").to_dict())
    ours = _flat(config.to_dict())
    changed = [(name, saved[name], ours[name]) for name in saved if saved[name] != ours[name]]
    fixed = [c for c in changed if c[0].split(".")[0] not in RESUMABLE_CHANGES]
    if fixed:
        listed = ", ".join(f"{name} {old!r} there, {new!r} here" for name, old, new in fixed)
        raise CaptionkitError(f"--resume {run_dir}: other settings than the run's ({listed})")
    for name, old, new in changed:
        print(f"resuming with {name} {new!r} (was {old!r})")


def _start_run_dir(config: RunConfig, run_dir: Path, resume: bool) -> Path:
    """The run folder made ready, and the checkpoint to resume from (checked to exist)."""
    last = run_dir / CHECKPOINTS / LAST
    if resume:
        if not (run_dir / "config.yaml").exists():
            raise CaptionkitError(f"--resume {run_dir}: not a run folder (no config.yaml)")
        if not last.exists():
            raise CaptionkitError(f"--resume {run_dir}: no {CHECKPOINTS}/{LAST} (the run stopped "
                                  "before its first checkpoint): train it again")  # fmt: skip
        _resumed_config(config, run_dir)
        if rank_zero_only.rank == 0:  # what a crash during a save left behind
            for partial in last.parent.glob(".*.tmp-*"):
                partial.unlink()
    if rank_zero_only.rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        if not resume:
            (run_dir / "metrics.jsonl").unlink(missing_ok=True)
            last.unlink(missing_ok=True)  # a stale one must never be resumed into this run
        config.to_yaml(run_dir / "config.yaml")  # `train --config` of this file trains the run
    return last


def train(config: RunConfig, run_dir: str | Path, resume: bool = False) -> dict:
    """Train a model as `config` says; the best checkpoint (by val CIDEr) lands in `run_dir`,
    beside `config` itself as `config.yaml`. With `resume`, continue the run in `run_dir` from
    `checkpoints/last.safetensors`. Returns the metrics row of the best validation."""
    run_dir = Path(run_dir)
    last = _start_run_dir(config, run_dir, resume)
    L.seed_everything(config.train.seed, workers=True, verbose=False)
    init = _load_init(config)
    dataset, encoder, store, train_records, val_records = _load_data(config, run_dir, init)
    # Again: extracting features (not when they were cached) draws from the global generator, so
    # without this the same config would train another model on a cold cache than on a warm one.
    L.seed_everything(config.train.seed, workers=True, verbose=False)
    vocab = _tokenizer(config, run_dir, init, train_records, resume)
    model = _model(config, vocab, encoder, init)
    finetune = config.encoder.finetune
    if finetune:
        data = _image_datamodule(config, encoder, dataset, train_records, val_records, vocab)
    else:
        use_grid = MODELS[config.model][1].uses_grid
        data = _datamodule(config, store, dataset, train_records, val_records, vocab, use_grid,
                           run_dir)  # fmt: skip
    datamodule, truncated = data
    val_options = DecodingOptions(config.train.val_beam_size, max_length=config.data.max_length)
    val_references = {r.filename: r.captions for r in val_records}
    module = CaptioningModule(model, vocab, config.optim, val_references, val_options,
                              encoder if finetune else None, config.encoder.lr,
                              seed=config.train.seed)  # fmt: skip
    extra = {"run": config.to_dict(), "dataset": {"name": dataset.name, **dataset.split_sizes(),
                                                  "truncated_captions": truncated}}  # fmt: skip
    base = init.encoder if init is not None else encoder.spec()
    # An encoder fine-tuned here or by the --init run is saved with the model.
    trained_encoder = encoder if finetune or base.get("finetuned") else None
    best = BestCheckpoint(run_dir, config.model, vocab, base, extra, trained_encoder)
    every, accumulate = config.train.checkpoint_every, config.optim.accumulate
    callbacks = [DataPosition(datamodule), best, LastCheckpoint(last, every, accumulate)]
    with warnings.catch_warnings():
        # Lightning warns about modules in eval mode: the frozen parts of a fine-tuned encoder;
        # about the log folder a resumed run goes on writing into ...
        warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")
        warnings.filterwarnings("ignore", message=r"Experiment logs directory .* exists")
        # ... and about resuming mid-epoch without a stateful DataLoader: DataPosition does it.
        warnings.filterwarnings("ignore", message=r"You're resuming from a checkpoint that ended")
        # ... and about the FLOP counts the throughput monitor could log (bench/ measures them).
        warnings.filterwarnings("ignore", message=r"When using the `ThroughputMonitor`")
        trainer = _trainer(config, run_dir, callbacks)
        trainer.fit(module, datamodule, ckpt_path=last if resume else None)
    return best.best


def _tokenizer(config: RunConfig, run_dir: Path, init: TrainedModel | None, train_records,
               resume: bool) -> Tokenizer:  # fmt: skip
    """The `--init` run's tokenizer, the resumed run's own (`tokenizer.json`), or a new one built
    from the training captions and saved as `tokenizer.json`."""
    path = run_dir / "tokenizer.json"
    if resume and path.exists():
        return tokenizer_from_dict(json.loads(path.read_text()))
    vocab = init.vocab if init is not None else build_tokenizer(
        config.data.tokenizer, (c for r in train_records for c in r.captions),
        config.data.min_count, config.data.vocab_size)  # fmt: skip
    if rank_zero_only.rank == 0:
        path.write_text(json.dumps(vocab.to_dict()))
    return vocab
