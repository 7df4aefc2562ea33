"""`train()`: dataset -> features -> vocabulary -> model -> Lightning Trainer -> run folder."""

from __future__ import annotations

import json
import time
from pathlib import Path

import lightning as L
from lightning.pytorch.loggers import CSVLogger

from captionkit.data import load_dataset
from captionkit.data.formats import write_splits
from captionkit.data.problems import Problems
from captionkit.data.tokenizers import Tokenizer, build_tokenizer
from captionkit.decoding import DecodingOptions
from captionkit.encoders import create_encoder
from captionkit.encoders.features import features_for_dataset
from captionkit.errors import CaptionkitError
from captionkit.models import MODELS, create_model
from captionkit.models.checkpoint import save_checkpoint
from captionkit.training.config import RunConfig
from captionkit.training.datamodule import CaptionDataModule, CaptionPairs, ImageRows
from captionkit.training.module import CaptioningModule


class BestCheckpoint(L.Callback):
    """After each validation: append to `metrics.jsonl`; save the model if val CIDEr improved."""

    def __init__(self, run_dir: Path, model_name: str, vocab: Tokenizer, encoder: dict,
                 extra: dict):  # fmt: skip
        self.run_dir, self.model_name, self.vocab = run_dir, model_name, vocab
        self.encoder, self.extra = encoder, extra
        self.best: dict = {}
        self.started = time.perf_counter()

    def on_validation_end(self, trainer: L.Trainer, module: CaptioningModule) -> None:
        if trainer.sanity_checking or "val/CIDEr" not in trainer.callback_metrics:
            return
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        row = {"epoch": trainer.current_epoch, "step": trainer.global_step, **metrics}
        row["elapsed_s"] = round(time.perf_counter() - self.started, 2)
        with open(self.run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
        if not self.best or row["val/CIDEr"] > self.best["val/CIDEr"]:
            self.best = row
            save_checkpoint(self.run_dir, module.model, self.model_name, self.vocab, self.encoder,
                            {**self.extra, "metrics": row})  # fmt: skip


def _datamodule(config: RunConfig, store, dataset, train_records, val_records, vocab, use_grid,
                run_dir: Path):  # fmt: skip
    """Training pairs (one per caption) and validation images over the feature store, and how
    many training captions were cut to `max_length` tokens."""
    pairs = [(dataset.path(r), c) for r in train_records for c in r.captions]
    encoded = [vocab.encode_with_info(c, config.data.max_length) for _, c in pairs]
    tokens = [ids for ids, _ in encoded]
    truncated = sum(cut for _, cut in encoded)
    limit = f"{config.data.max_length} {'words' if config.data.tokenizer == 'word' else 'tokens'}"
    print(f"truncated {truncated} of {len(pairs)} training captions to {limit}")
    train_set = CaptionPairs(store, store.rows([p for p, _ in pairs]), tokens, use_grid,
                             token_file=run_dir / "train_tokens.npy")  # fmt: skip
    val_rows = store.rows([dataset.path(r) for r in val_records])
    val_set = ImageRows(store, val_rows, [r.filename for r in val_records], use_grid)
    datamodule = CaptionDataModule(train_set, val_set, config.train.batch_size, config.train.seed,
                                   config.train.bucket_batches)  # fmt: skip
    return datamodule, truncated


def _trainer(config: RunConfig, run_dir: Path, checkpoint: BestCheckpoint) -> L.Trainer:
    return L.Trainer(
        max_epochs=config.train.epochs,
        accelerator=config.train.accelerator,
        devices=1,
        gradient_clip_val=config.optim.grad_clip or None,
        callbacks=[checkpoint],
        logger=CSVLogger(run_dir, name="logs"),
        enable_checkpointing=False,  # Lightning's .ckpt files are pickles; we save safetensors
        num_sanity_val_steps=0,
        enable_model_summary=False,
        log_every_n_steps=10,
    )


def _load_data(config: RunConfig, run_dir: Path):
    """Dataset, encoder and features; the split and every problem found go into the run folder."""
    problems = Problems(strict=config.data.strict)
    dataset = load_dataset(config.data.data, config.data.images, problems=problems)
    write_splits(dataset, run_dir / "splits.json")  # evaluation reuses exactly these test images
    encoder = create_encoder(config.encoder.name, config.encoder.weights)
    store, records = features_for_dataset(dataset, encoder, config.data.cache_dir)
    if problems.items:
        problems.write(run_dir / "problems.json")
        print(f"{problems.summary()} (listed in {run_dir / 'problems.json'})")
    train_records = [r for r in records if r.split == "train"]
    val_records = [r for r in records if r.split == "val"]
    if not train_records or not val_records:
        raise CaptionkitError(f"{dataset.source}: need images in both the train and val splits")
    return dataset, encoder, store, train_records, val_records


def train(config: RunConfig, run_dir: str | Path) -> dict:
    """Train a model as `config` says; the best checkpoint (by val CIDEr) lands in `run_dir`.
    Returns the metrics row of the best validation."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "metrics.jsonl").unlink(missing_ok=True)
    L.seed_everything(config.train.seed, workers=True, verbose=False)
    dataset, encoder, store, train_records, val_records = _load_data(config, run_dir)

    vocab = build_tokenizer(config.data.tokenizer, (c for r in train_records for c in r.captions),
                            config.data.min_count, config.data.vocab_size)  # fmt: skip
    model = create_model(config.model, vocab_size=len(vocab), feature_dim=encoder.feature_dim,
                         **config.model_args)  # fmt: skip
    use_grid = MODELS[config.model][1].uses_grid
    datamodule, truncated = _datamodule(
        config, store, dataset, train_records, val_records, vocab, use_grid, run_dir
    )
    val_options = DecodingOptions(config.train.val_beam_size, max_length=config.data.max_length)
    val_references = {r.filename: r.captions for r in val_records}
    module = CaptioningModule(model, vocab, config.optim, val_references, val_options)
    extra = {"run": config.to_dict(), "dataset": {"name": dataset.name, **dataset.split_sizes(),
                                                  "truncated_captions": truncated}}  # fmt: skip
    checkpoint = BestCheckpoint(run_dir, config.model, vocab, encoder.spec(), extra)
    _trainer(config, run_dir, checkpoint).fit(module, datamodule)
    return checkpoint.best
