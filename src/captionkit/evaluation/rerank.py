"""Re-ranking for trained runs: their neighbour index, built from their dataset when training did
not write one (runs older than re-ranking, runs that fine-tuned their encoder)."""

from __future__ import annotations

from pathlib import Path

from captionkit.data import load_dataset
from captionkit.encoders.features import features_for_dataset
from captionkit.errors import CaptionkitError
from captionkit.evaluation.evaluate import _pin_splits, encoder_for
from captionkit.models.checkpoint import TrainedModel, load_checkpoint
from captionkit.reranking import NeighbourIndex, Reranker, RerankOptions
from captionkit.reranking.neighbours import index_training_images


def index_run(run_dir: str | Path, data: str | Path, images: str | Path | None = None,
              cache_dir: str | None = None) -> NeighbourIndex:  # fmt: skip
    """Write the neighbour index of a run folder from the training split of `data` (the run's
    own split when it is the run's dataset), with the features of the run's own encoder
    (fine-tuned or not), and return it."""
    trained = load_checkpoint(run_dir)
    dataset = load_dataset(data, images)
    _pin_splits(dataset, Path(data), Path(run_dir), trained)
    encoder = encoder_for(trained)
    store, records = features_for_dataset(dataset, encoder, cache_dir)
    train = [r for r in records if r.split == "train"]
    if not train:
        raise CaptionkitError(f"{dataset.source}: no usable images in split 'train'")
    index_training_images(run_dir, store, [dataset.path(r) for r in train], train,
                          encoder.fingerprint())  # fmt: skip
    return NeighbourIndex.load(run_dir)


def run_reranker(trained: TrainedModel, options: RerankOptions,
                 reuse: Reranker | None = None) -> Reranker:  # fmt: skip
    """The re-ranker of a loaded run: its neighbour index is read only when re-ranking, and must
    come from the run's own encoder. `reuse`: an earlier re-ranker of the same run, whose index
    and tokenized captions serve again."""
    run = str(trained.run_dir or "the run")
    if reuse is not None and reuse.index is not None:
        return Reranker(options, reuse.index, run, reuse.corpus)
    index = None
    if options.active and NeighbourIndex.exists(run):
        index = NeighbourIndex.load(run)
        fingerprint = trained.encoder.get("fingerprint")
        if index.encoder is not None and index.encoder != fingerprint:
            raise CaptionkitError(f"{run}: its neighbour index holds the features of another "
                                  "encoder than the run's (rebuild it with index_run)")  # fmt: skip
    return Reranker(options, index, run)
