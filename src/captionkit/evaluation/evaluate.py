"""Evaluating a trained run on one split of a dataset."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from captionkit.data import load_dataset
from captionkit.data.formats import apply_splits
from captionkit.decoding import DecodingOptions, decode
from captionkit.decoding.ensemble import Ensemble
from captionkit.encoders.features import FeatureStore, features_for_dataset
from captionkit.errors import CaptionkitError
from captionkit.evaluation.captioner import encoders_for, load_members, run_options
from captionkit.metrics.caption_stats import caption_stats
from captionkit.metrics.coco_metrics import score_captions
from captionkit.models.quantize import (
    check_quantize,
    decoder_precision,
    encoder_amp,
    quantize_decoder,
)
from captionkit.models.run_folder import TrainedModel, load_checkpoint
from captionkit.reranking import Reranker, RerankOptions, run_reranker


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
    images: dict[str, Path] = field(default_factory=dict)
    """Image file name -> its path (for reports)."""
    rerank: RerankOptions = field(default_factory=lambda: RerankOptions("none"))
    """The re-ranking applied (`auto` resolved)."""

    def to_json(self) -> dict:
        """Metrics and statistics (numbers, at the top), notes, and every image's caption and
        scores."""
        images = [
            {"image": k, "caption": c, **self.per_image.get(k, {})}
            for k, c in self.predictions.items()
        ]
        return {**self.metrics, **self.stats, "notes": self.notes, "images": images}


def caption_rows(
    trained: TrainedModel | list[TrainedModel],
    store: FeatureStore | list,
    rows: list[int] | list[list[int]],
    options: DecodingOptions,
    batch_size: int = 64,
    reranker: Reranker | None = None,
) -> list[str]:
    """Captions for rows of a feature store, decoded in batches: the best beam, or with sampling
    the most probable of the `num_samples` drawn; with an active `reranker`, its choice among
    the candidates it asks for. An ensemble: `trained`, `store` and `rows` are lists, one per
    member (the same images in each member's store), decoded as one `Ensemble` (the first
    member's length limit, tokenizer and, for re-ranking, pooled features)."""
    ensemble = isinstance(trained, list)
    members, stores, member_rows = (
        (trained, store, rows) if ensemble else ([trained], [store], [rows])
    )
    reranking = reranker is not None and reranker.options.active
    options = run_options(members[0], reranker.options.decoding(options) if reranking else options)
    model = (
        members[0].model
        if not ensemble
        else Ensemble([t.model for t in members], options.ensemble_mean)
    )
    tokenizer, captions = members[0].tokenizer, []
    for start in range(0, len(member_rows[0]), batch_size):
        features = [
            _features(s, r[start : start + batch_size], t.model.uses_grid)
            for t, s, r in zip(members, stores, member_rows)
        ]
        pooled, grid = [f[0] for f in features], [f[1] for f in features]
        results = decode(
            model,
            pooled if ensemble else pooled[0],
            grid if ensemble else grid[0],
            options,
            tokenizer,
        )
        if reranking:
            results = reranker.rerank(results, lambda h: tokenizer.decode(h.tokens), pooled[0])
        best = [
            max(hyps, key=lambda h: h.score) if options.sample and not reranking else hyps[0]
            for hyps in results
        ]
        captions += [tokenizer.decode(hyp.tokens) for hyp in best]
    return captions


def _features(store: FeatureStore, rows: list[int], uses_grid: bool):
    """pooled [B, D] and grid [B, L, D] (None unless the model reads it) of store rows."""
    pooled = torch.from_numpy(np.asarray(store.pooled[rows], dtype=np.float32))
    if not uses_grid:
        return pooled, None
    return pooled, torch.from_numpy(np.asarray(store.grid[rows], dtype=np.float32))


def member_stores(dataset, members: list[TrainedModel], cache_dir, amp: str | None = None):
    """The feature store of each run of `members` (one run, or an ensemble's; a store per
    distinct encoder, extracted under autocast `amp` or found in the cache) and the records of
    `dataset` that every store holds: what `evaluate_run` decodes."""
    encoders = encoders_for(members)
    by_encoder, usable = {}, None
    for encoder in encoders:
        if id(encoder) not in by_encoder:
            store, records = features_for_dataset(dataset, encoder, cache_dir, amp=amp)
            by_encoder[id(encoder)] = store
            kept = {dataset.path(r) for r in records}
            usable = kept if usable is None else usable & kept
    records = [r for r in dataset.records if dataset.path(r) in usable]
    return [by_encoder[id(e)] for e in encoders], records


def pin_splits(dataset, data: Path, run_dir: Path, trained: TrainedModel) -> None:
    """On the dataset the run was trained on, use the split it wrote (`RUN/splits.json`): the
    same test images even when the format has no split of its own. `dataset` is changed in
    place; another dataset is left as it is."""
    trained_on = trained.data_setting("data")
    splits = run_dir / "splits.json"
    same_data = trained_on and Path(trained_on).resolve() in {
        data.resolve(),
        dataset.source.resolve(),
    }
    if same_data and splits.is_file():
        apply_splits(dataset, splits)


def evaluate_run(
    run_dir: str | Path | list,
    data: str | Path,
    images: str | Path | None = None,
    split: str = "test",
    cache_dir: str | None = None,
    meteor: bool = True,
    options: DecodingOptions | None = None,
    spice: bool = False,
    rerank: RerankOptions | None = None,
    quantize: str = "none",
) -> Evaluation:
    """Caption every image of `split` with the run's model and score it against the references.
    `options` (default: `DecodingOptions()`, beam 3) say how to decode; the caption length limit
    is the run's unless they set `max_length`. Novel captions are counted against the training
    split of the same dataset (the run's own split when it is the run's dataset). A list of run
    folders is an ensemble (`decoding.Ensemble`; the first run's split and length limit).
    `rerank` (default `RerankOptions()`, `auto`): re-rank each image's candidates
    (`captionkit.reranking`; by the first run's neighbour index). `quantize`: `int8` or `bf16`
    decode as `Captioner.load(..., quantize=)` does, on features extracted under the encoder's
    precision for it (a store of their own)."""
    ensemble = isinstance(run_dir, (list, tuple))
    members = load_members(list(run_dir)) if ensemble else [load_checkpoint(run_dir)]
    check_quantize(quantize)
    for member in members:
        member.model = quantize_decoder(member.model, quantize)
    options = options or DecodingOptions()
    # before decoding: a run without an index fails now if asked to re-rank
    reranker = run_reranker(members[0], rerank or RerankOptions(), decoding=options)
    dataset = load_dataset(data, images)
    first_run = Path(run_dir[0] if ensemble else run_dir)
    pin_splits(dataset, Path(data), first_run, members[0])
    stores, records = member_stores(dataset, members, cache_dir, encoder_amp(quantize))
    records = [r for r in records if r.split == split]
    if not records:
        raise CaptionkitError(f"{dataset.source}: no usable images in split '{split}'")
    rows = [store.rows([dataset.path(r) for r in records]) for store in stores]
    with decoder_precision(quantize):
        if ensemble:
            captions = caption_rows(members, stores, rows, options, reranker=reranker)
        else:
            captions = caption_rows(members[0], stores[0], rows[0], options, reranker=reranker)
    predictions = {r.filename: c for r, c in zip(records, captions)}
    references = {r.filename: r.captions for r in records}
    report = score_captions(predictions, references, meteor, spice)
    per_image = {
        k: {m: v[i] for m, v in report.per_image.items()} for i, k in enumerate(predictions)
    }
    training = [c for r in dataset.split("train") for c in r.captions]
    stats = caption_stats(predictions, training)
    paths = {r.filename: dataset.path(r) for r in records}
    return Evaluation(
        report.scores,
        predictions,
        references,
        per_image,
        stats,
        report.notes,
        images=paths,
        rerank=reranker.options,
    )
