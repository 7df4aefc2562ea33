"""`train()`: dataset -> features -> vocabulary -> model -> Lightning Trainer -> run folder."""

from __future__ import annotations

import dataclasses
import json
import shutil
import tempfile
import warnings
from datetime import timedelta
from pathlib import Path

import lightning as L
from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.pytorch.callbacks import ThroughputMonitor
from lightning.pytorch.callbacks.progress.rich_progress import _RICH_AVAILABLE
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from torch import nn

from captionkit.data import load_dataset
from captionkit.data.files import write_atomically, write_json_atomically
from captionkit.data.formats import write_splits
from captionkit.data.problems import Problems
from captionkit.data.tokenizers import Tokenizer, build_tokenizer, tokenizer_from_dict
from captionkit.decoding import DecodingOptions
from captionkit.encoders import ImageEncoder, create_encoder
from captionkit.encoders.factory import spec_resize
from captionkit.encoders.features import extract_features, features_for_dataset
from captionkit.encoders.finetune import unfreeze_last_blocks
from captionkit.errors import CaptionkitError
from captionkit.models import create_model, model_config_dict, model_entry
from captionkit.models.run_folder import (
    CONFIG,
    ENCODER_WEIGHTS,
    WEIGHTS,
    TrainedModel,
    encoder_for,
    load_checkpoint,
)
from captionkit.reranking.neighbours import index_training_images
from captionkit.training.callbacks import (
    BestCheckpoint,
    DataPosition,
    LastCheckpoint,
    RichBar,
    TqdmBar,
    ValEarlyStopping,
    captions_in,
    target_tokens_in,
)
from captionkit.training.config import RunConfig
from captionkit.training.library_output import library_output_filtered
from captionkit.training.module import CaptioningModule
from captionkit.training.preemption import Preempted, Preemption
from captionkit.training.ranks import RankWatch, WatchedDDP
from captionkit.training.resume_checkpoints import CHECKPOINTS, LAST, SafetensorsCheckpointIO
from captionkit.training.run_data import (
    caption_datamodule,
    image_datamodule,
    scst_datamodule,
)
from captionkit.training.run_preparation import run_folder_lock, start_run_dir
from captionkit.training.scst import ScstModule, ScstReward


def _trainer(config: RunConfig, run_dir: Path, callbacks: list[L.Callback]) -> L.Trainer:
    t = config.train
    if t.patience > 0:  # first: the checkpoints saved after a validation hold its updated count
        callbacks = [ValEarlyStopping(t.patience), *callbacks]
    watch = RankWatch(run_dir)  # in DDP, the other processes stop at once when one is lost
    # Logs train|samples_per_sec (captions), train|items_per_sec (target tokens) and batches/s.
    callbacks = [
        RichBar() if _RICH_AVAILABLE else TqdmBar(),
        *callbacks,
        ThroughputMonitor(batch_size_fn=captions_in, length_fn=target_tokens_in, window_size=10),
        watch,
    ]
    ddp = t.strategy == "ddp"
    return L.Trainer(
        max_epochs=t.epochs,
        # Under SLURM, Lightning restores any `hpc_ckpt_*.ckpt` it finds here at the start of a
        # fit: the run's own folder, not the directory the job was launched from.
        default_root_dir=run_dir,
        accelerator=t.accelerator,
        devices=t.devices,
        num_nodes=t.num_nodes,
        strategy=WatchedDDP(watch, timedelta(seconds=t.ddp_timeout)) if ddp else t.strategy,
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


def _load_init(config: RunConfig) -> TrainedModel | None:
    """The run named by `train.init`, refused if its model or encoder is another one."""
    if not config.train.init:
        return None
    init = load_checkpoint(config.train.init)
    model_name, encoder_name = init.config["model"]["name"], init.encoder["name"]
    if model_name != config.model:
        raise CaptionkitError(
            f"--init {config.train.init}: its model is {model_name}, not {config.model} (--model)"
        )
    if encoder_name != config.encoder.name:
        raise CaptionkitError(
            f"--init {config.train.init}: its encoder is {encoder_name}, "
            f"not {config.encoder.name} (--encoder)"
        )
    resize = spec_resize(init.encoder)
    if resize != config.encoder.resize:
        raise CaptionkitError(
            f"--init {config.train.init}: its encoder's photos were resized "
            f"by {resize}, not {config.encoder.resize} (--resize)"
        )
    return init


def _encoder(config: RunConfig, init: TrainedModel | None) -> ImageEncoder:
    """The `--init` run's encoder (fine-tuned or not) or a new one; when fine-tuning, with its last
    blocks trainable (checked before any feature is extracted)."""
    if init is not None:
        encoder = encoder_for(init)
    else:
        encoder = create_encoder(config.encoder.name, config.encoder.weights, config.encoder.resize)
    if config.encoder.finetune:
        unfreeze_last_blocks(encoder, config.encoder.finetune_blocks)
    return encoder


def _model(
    config: RunConfig, vocab: Tokenizer, encoder: ImageEncoder, init: TrainedModel | None
) -> nn.Module:
    """A new model, or one with the `--init` run's weights (the same settings are required)."""
    model = create_model(
        config.model, vocab_size=len(vocab), feature_dim=encoder.feature_dim, **config.model_args
    )
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


def _fit(
    config: RunConfig,
    run_dir: Path,
    module,
    datamodule,
    callbacks: list[L.Callback],
    ckpt_path: Path | None,
) -> None:
    """Lightning's fit, without the warnings that do not apply to our runs, nor the libraries'
    output that is not the user's business (`library_output`)."""
    with warnings.catch_warnings(), library_output_filtered():
        # Lightning warns about modules in eval mode: the frozen parts of a fine-tuned encoder;
        # about the log folder a resumed run goes on writing into ...
        warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")
        warnings.filterwarnings("ignore", message=r"Experiment logs directory .* exists")
        # ... and about resuming mid-epoch without a stateful DataLoader: DataPosition does it.
        warnings.filterwarnings("ignore", message=r"You're resuming from a checkpoint that ended")
        # ... and about the FLOP counts the throughput monitor could log (bench/ measures them).
        warnings.filterwarnings("ignore", message=r"When using the `ThroughputMonitor`")
        trainer = _trainer(config, run_dir, callbacks)
        _fit_watched(trainer, module, datamodule, ckpt_path)


def _fit_watched(trainer: L.Trainer, module, datamodule, ckpt_path: Path | None) -> None:
    """`trainer.fit`; when it fails because a DDP process was lost, the error names its rank."""
    watch = next(c for c in trainer.callbacks if isinstance(c, RankWatch))
    try:
        trainer.fit(module, datamodule, ckpt_path=ckpt_path)
    except Preempted:
        raise
    except Exception:
        lost = watch.lost_rank_error()
        if lost is not None:
            raise lost from None
        raise
    finally:
        watch.stop()


def train_phase(
    config: RunConfig, run_dir: str | Path, resume: bool = False, to_beat: dict | None = None
) -> dict:
    """Train a model as `config` says, one objective; the best checkpoint (by val CIDEr) lands
    in `run_dir`, beside `config` itself as `config.yaml`. With `resume`, continue the run in
    `run_dir` from `checkpoints/last.safetensors`. `to_beat`: a metrics row of an earlier phase;
    no model is exported until val CIDEr is above its. Returns the best validation's row."""
    run_dir = Path(run_dir)
    scst = config.optim.objective == "scst"
    if scst and not config.train.init:
        raise CaptionkitError(
            "--objective scst fine-tunes a trained model: give --init RUN_DIR "
            "(a run trained with the default objective, xe)"
        )
    last = start_run_dir(config, run_dir, resume)
    L.seed_everything(config.train.seed, workers=True, verbose=False)
    init = _load_init(config)
    dataset, encoder, store, train_records, val_records = _load_data(config, run_dir, init)
    # Again: extracting features (not when they were cached) draws from the global generator, so
    # without this the same config would train another model on a cold cache than on a warm one.
    L.seed_everything(config.train.seed, workers=True, verbose=False)
    vocab = _tokenizer(config, run_dir, init, train_records, resume)
    model = _model(config, vocab, encoder, init)
    finetune, use_grid = config.encoder.finetune, model_entry(config.model).model_class.uses_grid
    if scst:
        data = (
            scst_datamodule(config, encoder, store, dataset, train_records, val_records, use_grid),
            0,
        )
    elif finetune:
        data = image_datamodule(config, encoder, dataset, train_records, val_records, vocab)
    else:
        data = caption_datamodule(
            config, encoder, store, dataset, train_records, val_records, vocab, use_grid, run_dir
        )
    datamodule, truncated = data
    val_options = DecodingOptions(config.train.val_beam_size, max_length=config.data.max_length)
    val_references = {r.filename: r.captions for r in val_records}
    args = (
        model,
        vocab,
        config.optim,
        val_references,
        val_options,
        encoder if finetune else None,
        config.encoder.lr,
    )
    if scst:
        reward = ScstReward(
            {r.filename: r.captions for r in train_records}, config.scst.bleu_weight
        )
        module = ScstModule(
            *args,
            seed=config.train.seed,
            scst=config.scst,
            reward=reward,
            max_length=config.data.max_length,
        )
    else:
        module = CaptioningModule(*args, seed=config.train.seed)
    extra = {
        "run": config.to_dict(),
        "dataset": {"name": dataset.name, **dataset.split_sizes(), "truncated_captions": truncated},
    }
    base = init.encoder if init is not None else encoder.spec()
    # An encoder fine-tuned here or by the --init run is saved with the model.
    trained_encoder = encoder if finetune or base.get("finetuned") else None
    best = BestCheckpoint(run_dir, config.model, vocab, base, extra, trained_encoder)
    best.best = dict(to_beat or {})
    every, accumulate = config.train.checkpoint_every, config.optim.accumulate
    saver = LastCheckpoint(last, every, accumulate)
    # Preemption after LastCheckpoint: at a step both would save, the state is written once.
    callbacks = [DataPosition(datamodule), best, saver, Preemption(saver, run_dir, accumulate)]
    _fit(config, run_dir, module, datamodule, callbacks, last if resume else None)
    if rank_zero_only.rank == 0 and (run_dir / WEIGHTS).exists():
        _index_neighbours(
            config, run_dir, store, [dataset.path(r) for r in train_records], train_records, encoder
        )
    return best.best


def _index_neighbours(
    config: RunConfig, run_dir: Path, store, paths: list[Path], records, encoder: ImageEncoder
) -> None:
    """Re-ranking's neighbour index: the training images' pooled features by the encoder that
    the run exports. A fine-tuned encoder's features are not the cached ones: the exported
    (best) encoder extracts them again, into a cache folder that is then removed."""
    if not config.encoder.finetune:
        index_training_images(run_dir, store, paths, records, encoder.fingerprint())
        return
    exported = encoder_for(load_checkpoint(run_dir))
    with tempfile.TemporaryDirectory() as cache:
        store = extract_features(exported, paths, Path(cache), grid=False)
        index_training_images(run_dir, store, paths, records, exported.fingerprint())


def _tokenizer(
    config: RunConfig, run_dir: Path, init: TrainedModel | None, train_records, resume: bool
) -> Tokenizer:
    """The `--init` run's tokenizer, the resumed run's own (`tokenizer.json`), or a new one built
    from the training captions and saved as `tokenizer.json`."""
    path = run_dir / "tokenizer.json"
    if resume and path.exists():
        return tokenizer_from_dict(json.loads(path.read_text()))
    vocab = (
        init.tokenizer
        if init is not None
        else build_tokenizer(
            config.data.tokenizer,
            (c for r in train_records for c in r.captions),
            config.data.min_count,
            config.data.vocab_size,
        )
    )
    if rank_zero_only.rank == 0:
        path.write_text(json.dumps(vocab.to_dict()))
    return vocab


SCST_PHASE = "scst"  # the sub-folder of a run where its SCST phase trains


def train(config: RunConfig, run_dir: str | Path, resume: bool = False) -> dict:
    """Train as `config` says (see `train_phase`). With `train.scst_epochs`, two phases: the
    cross-entropy epochs in `run_dir`, then SCST from its best checkpoint in `run_dir/scst`;
    when SCST raises val CIDEr, its model replaces the cross-entropy one in `run_dir`. Returns
    the metrics row of the best validation of the model kept."""
    run_dir = Path(run_dir)
    with run_folder_lock(run_dir):
        if config.train.scst_epochs == 0 or config.optim.objective == "scst":
            return train_phase(config, run_dir, resume)
        return _two_phases(config, run_dir, resume)


def _two_phases(config: RunConfig, run_dir: Path, resume: bool) -> dict:
    """Cross-entropy in `run_dir`, then SCST in `run_dir/scst` (see `train`)."""
    scst_dir = run_dir / SCST_PHASE
    if resume and (scst_dir / "config.yaml").exists():  # the cross-entropy phase had finished
        xe_best = _best_row(run_dir / "metrics.jsonl")
    else:
        xe_best = train_phase(config, run_dir, resume)
    resume_scst = resume and (scst_dir / CHECKPOINTS / LAST).exists()
    best = train_phase(_scst_phase(config, run_dir), scst_dir, resume_scst, to_beat=xe_best)
    won = best["val/CIDEr"] > xe_best["val/CIDEr"]
    if rank_zero_only.rank == 0:
        if won:
            _adopt_scst_model(config, run_dir, scst_dir)
        kept = "SCST" if won else "cross-entropy (SCST did not beat it)"
        print(
            f"val CIDEr: cross-entropy {xe_best['val/CIDEr']:.3f}, SCST "
            f"{best['val/CIDEr']:.3f}: kept the {kept} model in {run_dir}"
        )
    return best if won else xe_best


def _scst_phase(config: RunConfig, run_dir: Path) -> RunConfig:
    """The SCST phase of a two-phase run: from the run's best cross-entropy model, at the SCST
    learning rate, constant (the cross-entropy schedule's warmup and decay were for that phase)."""
    optim = dataclasses.replace(
        config.optim,
        objective="scst",
        lr=config.scst.lr,
        schedule="constant",
        warmup_steps=0,
        label_smoothing=0.0,
        scheduled_sampling=0.0,
        average_last=0,
        caption_weights="uniform",
    )
    train = dataclasses.replace(
        config.train, epochs=config.train.scst_epochs, scst_epochs=0, init=str(run_dir)
    )
    return dataclasses.replace(config, optim=optim, train=train)


def _best_row(metrics: Path) -> dict:
    """The validation row with the best val CIDEr of a `metrics.jsonl`."""
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    if not rows:
        raise CaptionkitError(f"{metrics}: no validation recorded")
    return max(rows, key=lambda row: row["val/CIDEr"])


def _adopt_scst_model(config: RunConfig, run_dir: Path, scst_dir: Path) -> None:
    """Copy the SCST phase's exported model over the run's own (each file atomically); its
    `config.json` then describes the whole two-phase run."""
    for name in (WEIGHTS, ENCODER_WEIGHTS):
        if (scst_dir / name).exists():
            write_atomically(run_dir / name, lambda tmp, n=name: shutil.copyfile(scst_dir / n, tmp))
    exported = json.loads((scst_dir / CONFIG).read_text())
    exported["run"], exported["phase"] = config.to_dict(), SCST_PHASE
    write_json_atomically(run_dir / CONFIG, exported, indent=2)
