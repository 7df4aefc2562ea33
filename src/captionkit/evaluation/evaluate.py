"""Evaluating a trained run on one split of a dataset."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from captionkit.data import load_dataset
from captionkit.data.formats import apply_splits
from captionkit.decoding import DecodingOptions, decode
from captionkit.decoding.decoding import DEFAULT_MAX_LENGTH
from captionkit.encoders import create_encoder
from captionkit.encoders.features import FeatureStore, features_for_dataset
from captionkit.errors import CaptionkitError
from captionkit.evaluation.metrics import score_captions
from captionkit.evaluation.stats import caption_stats
from captionkit.models.checkpoint import ENCODER_WEIGHTS, TrainedModel, load_checkpoint
from captionkit.reranking import Reranker, RerankOptions


@dataclass
class Evaluation:
    """Metrics of a run on one split, with the captions behind them."""

    metrics: dict[str, float]
    predictions: dict[str, str]
    """Image file name -> generated caption."""
    references: dict[str, list[str]]
    per_image: dict[str, dict[str, float]] = field(default_factory=dict)
    """Image file name -> its own CIDEr, ROUGE-L (METEOR, SPICE when computed)."""
    stats: dict[str, float] = field(default_factory=dict)
    """Mean caption length, vocabulary used, % novel captions (`stats.caption_stats`)."""
    notes: list[str] = field(default_factory=list)
    """One line for each metric skipped or computed otherwise (no java, no SPICE)."""

    def to_json(self) -> dict:
        """Metrics and statistics (numbers, at the top), notes, and every image's caption and
        scores."""
        images = [{"image": k, "caption": c, **self.per_image.get(k, {})}
                  for k, c in self.predictions.items()]  # fmt: skip
        return {**self.metrics, **self.stats, "notes": self.notes, "images": images}

    images: dict[str, Path] = field(default_factory=dict)
    """Image file name -> its path (for reports)."""


def encoder_for(trained: TrainedModel):
    """Rebuild the encoder a model was trained on (a fine-tuned one from the run's
    `encoder.safetensors`), refusing one with other weights."""
    spec = trained.encoder
    weights = spec["weights"]
    if spec.get("finetuned"):
        weights = str(Path(trained.run_dir or ".") / ENCODER_WEIGHTS)
    encoder = create_encoder(spec["name"], weights)
    if encoder.fingerprint() != spec["fingerprint"]:
        raise CaptionkitError(
            f"encoder {spec['name']} ({weights}) has other weights than in training"
        )
    return encoder


def run_options(trained: TrainedModel, options: DecodingOptions) -> DecodingOptions:
    """`options`, with the caption length limit the run was trained with unless they set one."""
    if options.max_length is not None:
        return options
    max_length = trained.data_setting("max_length", DEFAULT_MAX_LENGTH)
    return dataclasses.replace(options, max_length=max_length)


def caption_rows(trained: TrainedModel, store: FeatureStore, rows: list[int],
                 options: DecodingOptions, batch_size: int = 64,
                 reranker: Reranker | None = None) -> list[str]:  # fmt: skip
    """Captions for rows of a feature store, decoded in batches: the best beam, or with sampling
    the most probable of the `num_samples` drawn; with an active `reranker`, its choice among
    the candidates it asks for."""
    reranking = reranker is not None and reranker.options.active
    options = run_options(trained, reranker.options.decoding(options) if reranking else options)
    uses_grid = trained.model.uses_grid
    captions = []
    for start in range(0, len(rows), batch_size):
        batch = rows[start : start + batch_size]
        pooled = torch.from_numpy(np.asarray(store.pooled[batch], dtype=np.float32))
        grid = (
            torch.from_numpy(np.asarray(store.grid[batch], dtype=np.float32)) if uses_grid else None
        )
        results = decode(trained.model, pooled, grid, options)
        if reranking:
            results = reranker.rerank(results, lambda h: trained.vocab.decode(h.tokens), pooled)
        best = [max(hyps, key=lambda h: h.score) if options.sample and not reranking else hyps[0]
                for hyps in results]  # fmt: skip
        captions += [trained.vocab.decode(hyp.tokens) for hyp in best]
    return captions


def _pin_splits(dataset, data: Path, run_dir: Path, trained: TrainedModel) -> None:
    """On the dataset the run was trained on, use the split it wrote: the same test images even
    when the format has no split of its own."""
    trained_on = trained.data_setting("data")
    splits = run_dir / "splits.json"
    same_data = trained_on and Path(trained_on).resolve() in {
        data.resolve(),
        dataset.source.resolve(),
    }
    if same_data and splits.is_file():
        apply_splits(dataset, splits)


def evaluate_run(run_dir: str | Path, data: str | Path, images: str | Path | None = None,
                 split: str = "test", beam_size: int = 3, cache_dir: str | None = None,
                 meteor: bool = True, options: DecodingOptions | None = None,
                 spice: bool = False,
                 rerank: RerankOptions | None = None) -> Evaluation:  # fmt: skip
    """Caption every image of `split` with the run's model and score it against the references.
    `options` (default: beam search of `beam_size`) say how to decode; the caption length limit
    is the run's unless they set `max_length`. Novel captions are counted against the training
    split of the same dataset (the run's own split when it is the run's dataset). `rerank`:
    re-rank each image's candidates (`captionkit.reranking`; the run needs its neighbour index)."""
    trained = load_checkpoint(run_dir)
    reranker = None
    if rerank is not None and rerank.active:  # before decoding: a run without an index fails now
        from captionkit.evaluation.rerank import run_reranker

        reranker = run_reranker(trained, rerank)
    dataset = load_dataset(data, images)
    _pin_splits(dataset, Path(data), Path(run_dir), trained)
    store, records = features_for_dataset(dataset, encoder_for(trained), cache_dir)
    records = [r for r in records if r.split == split]
    if not records:
        raise CaptionkitError(f"{dataset.source}: no usable images in split '{split}'")
    rows = store.rows([dataset.path(r) for r in records])
    options = options or DecodingOptions(beam_size=beam_size)
    captions = caption_rows(trained, store, rows, options, reranker=reranker)
    predictions = {r.filename: c for r, c in zip(records, captions)}
    references = {r.filename: r.captions for r in records}
    report = score_captions(predictions, references, meteor, spice)
    per_image = {k: {m: v[i] for m, v in report.per_image.items()}
                 for i, k in enumerate(predictions)}  # fmt: skip
    training = [c for r in dataset.split("train") for c in r.captions]
    stats = caption_stats(predictions, training)
    paths = {r.filename: dataset.path(r) for r in records}
    return Evaluation(report.scores, predictions, references, per_image, stats, report.notes,
                      paths)  # fmt: skip
