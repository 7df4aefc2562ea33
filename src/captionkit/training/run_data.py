"""The data of a training run: caption batches over cached features (with their augmented views),
augmented images for a fine-tuned encoder, or images for SCST; and the token ids of the captions."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from captionkit.data.ptb_tokenizer import tokenize
from captionkit.data.tokenizers import Tokenizer
from captionkit.encoders import ImageEncoder
from captionkit.encoders.features import extract_features
from captionkit.encoders.finetune import augmenting_transform
from captionkit.encoders.views import views
from captionkit.metrics.cider_d import CiderD, DocumentFrequency
from captionkit.training.config import RunConfig
from captionkit.training.feature_batches import CaptionDataModule, CaptionPairs, ImageRows
from captionkit.training.image_batches import CaptionedImages, ImageDataModule


def train_tokens(config: RunConfig, vocab: Tokenizer, train_records):
    """Token ids of each training image's captions, and how many were cut to `max_length`."""
    tokens, truncated = [], 0
    for r in train_records:
        encoded = [vocab.encode_with_info(c, config.data.max_length) for c in r.captions]
        tokens.append([ids for ids, _ in encoded])
        truncated += sum(cut for _, cut in encoded)
    limit = f"{config.data.max_length} {'words' if config.data.tokenizer == 'word' else 'tokens'}"
    print(f"truncated {truncated} of {sum(map(len, tokens))} training captions to {limit}")
    return tokens, truncated


def consensus_weights(captions: list[list[str]]) -> list[list[float]]:
    """Each caption's CIDEr-D against its image's other captions (document frequencies of all
    the images' captions), scaled to a mean of 1 over the image's captions; uniform for an image
    whose captions all score 0 or that has one caption. `captions` [image][caption] -> the same
    shape."""
    refs = {i: [" ".join(tokenize(c)) for c in caps] for i, caps in enumerate(captions)}
    others = {
        (i, j): caps[:j] + caps[j + 1 :]
        for i, caps in refs.items()
        if len(caps) > 1
        for j in range(len(caps))
    }
    scores = CiderD(others, df=DocumentFrequency.from_references(refs)).score(
        [refs[i][j] for i, j in others], list(others)
    )
    shared = [len(caps) if len(caps) > 1 else 0 for caps in refs.values()]  # scored captions
    weights = []
    for caps, mine in zip(refs.values(), np.split(scores, np.cumsum(shared)[:-1])):
        total = mine.sum()
        weights.append((mine * len(caps) / total if total > 0 else np.ones(len(caps))).tolist())
    return weights


def caption_weights(config: RunConfig, train_records) -> list[list[float]] | None:
    """The loss weight of each training image's captions (`optim.caption_weights`; None when
    uniform)."""
    if config.optim.caption_weights == "uniform":
        return None
    return consensus_weights([r.captions for r in train_records])


def feature_views(config: RunConfig, encoder: ImageEncoder, paths: list[Path]) -> list:
    """The feature stores of the `config.encoder.feature_views` augmented views of the training
    images (extracted once, then read from the cache)."""
    e = config.encoder
    return [
        extract_features(encoder, paths, config.data.cache_dir, view=view)
        for view in views(e.feature_views, e.crop_scale_min, e.hflip)
    ]


def caption_datamodule(
    config: RunConfig,
    encoder: ImageEncoder | None,
    store,
    dataset,
    train_records,
    val_records,
    vocab,
    use_grid,
    run_dir: Path,
):
    """Training pairs (one per caption) over the feature store and its augmented views, and
    validation images; and how many training captions were cut to `max_length` tokens.
    `encoder` extracts the views (`encoder.feature_views`; None when there are none)."""
    pairs = [dataset.path(r) for r in train_records for _ in r.captions]
    per_image, truncated = train_tokens(config, vocab, train_records)
    tokens = [ids for image_tokens in per_image for ids in image_tokens]
    view_stores = feature_views(config, encoder, [dataset.path(r) for r in train_records])
    train_set = CaptionPairs(
        store,
        store.rows(pairs),
        tokens,
        use_grid,
        token_file=run_dir / "train_tokens.npy",
        views=[(v, v.rows(pairs)) for v in view_stores],
        seed=config.train.seed,
        group_images=config.train.group_images,
        weights=_flat(caption_weights(config, train_records)),
    )
    val_rows = store.rows([dataset.path(r) for r in val_records])
    val_set = ImageRows(store, val_rows, [r.filename for r in val_records], use_grid)
    datamodule = CaptionDataModule(
        train_set, val_set, config.train.batch_size, config.train.seed, config.train.bucket_batches
    )
    return datamodule, truncated


def _flat(per_image: list[list[float]] | None) -> list[float] | None:
    return None if per_image is None else [w for image in per_image for w in image]


def image_datamodule(
    config: RunConfig, encoder: ImageEncoder, dataset, train_records, val_records, vocab: Tokenizer
):
    """Fine-tuning: training images (augmented, each with all its captions) and validation images,
    decoded on the fly; and how many training captions were cut to `max_length` tokens."""
    tokens, truncated = train_tokens(config, vocab, train_records)
    augment = augmenting_transform(encoder, config.encoder.crop_scale_min, config.encoder.hflip)
    train_set = CaptionedImages(
        [dataset.path(r) for r in train_records],
        augment,
        tokens=tokens,
        seed=config.train.seed,
        weights=caption_weights(config, train_records),
    )
    val_set = CaptionedImages(
        [dataset.path(r) for r in val_records],
        encoder.transform(),
        keys=[r.filename for r in val_records],
    )
    captions_per_image = sum(map(len, tokens)) / len(tokens)
    images_per_batch = max(1, round(config.train.batch_size / captions_per_image))
    datamodule = ImageDataModule(
        train_set, val_set, images_per_batch, config.train.seed, config.train.workers
    )
    return datamodule, truncated


def scst_datamodule(
    config: RunConfig,
    encoder: ImageEncoder,
    store,
    dataset,
    train_records,
    val_records,
    use_grid: bool,
):
    """SCST: batches of training images, each once per epoch with its key (its references give
    the rewards): features, or augmented images when the encoder is fine-tuned."""
    keys = [r.filename for r in train_records]
    images_per_batch = max(1, config.train.batch_size // config.scst.samples)
    seed = config.train.seed
    if config.encoder.finetune:
        augment = augmenting_transform(encoder, config.encoder.crop_scale_min, config.encoder.hflip)
        train_set = CaptionedImages(
            [dataset.path(r) for r in train_records], augment, keys=keys, seed=seed
        )
        val_set = CaptionedImages(
            [dataset.path(r) for r in val_records],
            encoder.transform(),
            keys=[r.filename for r in val_records],
        )
        return ImageDataModule(train_set, val_set, images_per_batch, seed, config.train.workers)
    train_set = ImageRows(
        store, store.rows([dataset.path(r) for r in train_records]), keys, use_grid
    )
    val_rows = store.rows([dataset.path(r) for r in val_records])
    val_set = ImageRows(store, val_rows, [r.filename for r in val_records], use_grid)
    return CaptionDataModule(train_set, val_set, images_per_batch, seed)
