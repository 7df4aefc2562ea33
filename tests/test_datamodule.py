"""Training batches: length buckets, every caption once per epoch, seeded order."""

import numpy as np
import torch

from captionkit.encoders.features import FeatureStore
from captionkit.training.datamodule import BucketBatchSampler, CaptionPairs, token_array


def test_bucket_sampler_covers_every_caption_once_with_similar_lengths():
    rng = np.random.default_rng(0)
    lengths = rng.integers(3, 30, size=1000)
    sampler = BucketBatchSampler(lengths, batch_size=16, seed=1, pool_batches=10)
    batches = list(sampler)
    assert sorted(i for b in batches for i in b) == list(range(1000))
    spread = np.mean([np.ptp(lengths[b]) for b in batches])
    random_spread = np.mean([np.ptp(lengths[rng.permutation(1000)[:16]]) for _ in range(50)])
    assert spread < random_spread / 3  # buckets really group similar lengths
    assert list(BucketBatchSampler(lengths, 16, seed=1, pool_batches=10)) == batches
    sampler.set_epoch(1)
    assert list(sampler) != batches and len(sampler) == len(batches)


def test_drop_last_keeps_only_full_batches():
    sampler = BucketBatchSampler(np.arange(50) % 7, batch_size=8, seed=0, drop_last=True)
    assert all(len(b) == 8 for b in sampler) and len(sampler) == 6


def test_caption_pairs_batches_match_the_sources(tmp_path):
    pooled = np.arange(20, dtype=np.float16).reshape(5, 4)
    store = FeatureStore(tmp_path, [f"{i}.jpg" for i in range(5)], pooled, None)
    tokens = [[1, 5, 2], [1, 6, 7, 8, 2], [1, 2]]
    pairs = CaptionPairs(store, [4, 0, 2], tokens, use_grid=False, token_file=tmp_path / "t.npy")
    assert isinstance(pairs.tokens, np.memmap)
    batch = pairs.__getitems__([2, 0])
    assert torch.equal(batch["pooled"], torch.tensor(pooled[[2, 4]], dtype=torch.float32))
    assert batch["tokens"].tolist() == [[1, 2, 0], [1, 5, 2]]  # trimmed to the batch's longest
    assert batch["grid"] is None
    assert token_array(tokens).shape == (3, 5)
