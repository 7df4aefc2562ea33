"""Re-ranking for trained runs: their neighbour index, built from their dataset when training did
not write one (runs older than re-ranking, runs that fine-tuned their encoder)."""

from __future__ import annotations

from pathlib import Path

from captionkit.data import load_dataset
from captionkit.encoders.features import features_for_dataset
from captionkit.errors import CaptionkitError
from captionkit.evaluation.evaluate import pin_splits
from captionkit.models.run_folder import encoder_for, load_checkpoint
from captionkit.reranking import NeighbourIndex
from captionkit.reranking.neighbours import index_training_images


def index_run(
    run_dir: str | Path,
    data: str | Path,
    images: str | Path | None = None,
    cache_dir: str | None = None,
) -> NeighbourIndex:
    """Write the neighbour index of a run folder from the training split of `data` (the run's
    own split when it is the run's dataset), with the features of the run's own encoder
    (fine-tuned or not), and return it."""
    trained = load_checkpoint(run_dir)
    dataset = load_dataset(data, images)
    pin_splits(dataset, Path(data), Path(run_dir), trained)
    encoder = encoder_for(trained)
    store, records = features_for_dataset(dataset, encoder, cache_dir)
    train = [r for r in records if r.split == "train"]
    if not train:
        raise CaptionkitError(f"{dataset.source}: no usable images in split 'train'")
    index_training_images(
        run_dir, store, [dataset.path(r) for r in train], train, encoder.fingerprint()
    )
    return NeighbourIndex.load(run_dir)
