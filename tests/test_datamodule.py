"""Training batches: length buckets, every caption once per epoch, seeded order."""

import numpy as np
import torch

from captionkit.encoders.features import FeatureStore
from captionkit.training.feature_batches import (
    BucketBatchSampler,
    CaptionPairs,
    ImageBatchSampler,
    token_array,
)
from captionkit.training.image_batches import collate_images


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
    # A DDP rank may write its copy before rank 0 has made the run folder.
    assert token_array(tokens, tmp_path / "not-yet" / "t.npy").shape == (3, 5)


def test_caption_batches_carry_each_captions_loss_weight(tmp_path):
    store = FeatureStore(tmp_path, ["0.jpg", "1.jpg"], np.zeros((2, 4), np.float16), None)
    tokens = [[1, 5, 2], [1, 6, 7, 2], [1, 2]]
    pairs = CaptionPairs(store, [0, 0, 1], tokens, use_grid=False, weights=[0.5, 1.5, 1.0])
    assert pairs.__getitems__([2, 0])["weights"].tolist() == [1.0, 0.5]
    assert "weights" not in CaptionPairs(store, [0, 0, 1], tokens, False).__getitems__([0])
    # Fine-tuning batches: whole images, each with its captions' weights, in caption order.
    image = {"pixels": torch.zeros(3, 2, 2), "key": None}
    batch = collate_images([{**image, "tokens": tokens[:2], "weights": [0.5, 1.5]}, None,
                            {**image, "tokens": tokens[2:], "weights": [1.0]}])  # fmt: skip
    assert batch["weights"].tolist() == [0.5, 1.5, 1.0]
    assert batch["image_index"].tolist() == [0, 0, 1]


def test_ddp_shares_make_up_the_single_process_batches_and_resume_skips():
    lengths = np.random.default_rng(0).integers(3, 15, 100)
    whole = BucketBatchSampler(lengths, 16, seed=5, pool_batches=2, drop_last=True)
    shares = [BucketBatchSampler(lengths, 8, seed=5, pool_batches=2, drop_last=True, rank=r,
                                 world=2) for r in range(2)]  # fmt: skip
    for epoch in (0, 3):
        for s in (whole, *shares):
            s.set_epoch(epoch)
        together = [sorted(a + b) for a, b in zip(*shares)]
        assert together == [sorted(b) for b in whole]
        assert all(len(a) == 8 for a in shares[0])
    first = list(whole)
    whole.set_epoch(0)
    whole.resume_at(3, 2)  # also sets the epoch: a resumed run iterates before any set_epoch
    assert list(whole) == first[2:]
    assert list(whole) == first  # only the next pass is shortened


def test_seeded_augmentation_depends_on_epoch_and_image_only(tmp_path):
    from PIL import Image

    from captionkit.training.image_batches import CaptionedImages, EpochIndices

    pixels = (np.arange(64 * 64 * 3) % 251).astype(np.uint8).reshape(64, 64, 3)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(tmp_path / "b.png")

    def crop(image):  # a random crop drawn from torch's global generator, as torchvision's
        i, j = torch.randint(0, 32, (2,)).tolist()
        return torch.from_numpy(np.asarray(image)[i : i + 32, j : j + 32].copy())

    data = CaptionedImages([tmp_path / "a.png", tmp_path / "b.png"], crop, tokens=[[[1]], [[1]]],
                           seed=7)  # fmt: skip
    torch.manual_seed(0)
    first = data[2]["pixels"]  # epoch 1, image 0
    torch.manual_seed(1)  # the global generator's state does not matter ...
    state = torch.get_rng_state()
    assert torch.equal(data[2]["pixels"], first)
    assert torch.equal(torch.get_rng_state(), state)  # ... and is left as it was
    assert not torch.equal(data[0]["pixels"], first)  # ... the epoch matters
    sampler = BucketBatchSampler(np.zeros(2), 2, seed=0, pool_batches=1)
    sampler.set_epoch(3)
    assert sorted(next(iter(EpochIndices(sampler, 2)))) == [6, 7]


def test_image_batches_hold_whole_images_once_per_epoch_and_share_under_ddp():
    image_of = np.repeat(np.random.default_rng(1).permutation(40), 5)  # 5 captions an image
    image_of[:3] = 99  # and one image of 3
    whole = ImageBatchSampler(image_of, 8, seed=2, drop_last=True)
    shares = [ImageBatchSampler(image_of, 4, seed=2, drop_last=True, rank=r, world=2)
              for r in range(2)]  # fmt: skip
    for epoch in (0, 1):
        for s in (whole, *shares):
            s.set_epoch(epoch)
        batches = list(whole)
        assert len(batches) == len(whole) == 41 // 8
        for b in batches:
            images = set(image_of[b])
            assert len(images) == 8  # whole images: every caption of each
            assert sorted(b) == sorted(np.flatnonzero(np.isin(image_of, list(images))))
        assert len({i for b in batches for i in b}) == sum(map(len, batches))
        assert [sorted(a + b) for a, b in zip(*shares)] == [sorted(b) for b in batches]
    assert list(whole) != list(ImageBatchSampler(image_of, 8, seed=2, drop_last=True))
    everything = ImageBatchSampler(image_of, 8, seed=2)
    assert sorted(i for b in everything for i in b) == list(range(len(image_of)))
    first = list(everything)
    everything.resume_at(0, 2)
    assert list(everything) == first[2:]


def test_grouped_caption_pairs_read_each_image_once(tmp_path):
    pooled = np.arange(20, dtype=np.float16).reshape(5, 4)
    grid = np.arange(60, dtype=np.float16).reshape(5, 3, 4)
    store = FeatureStore(tmp_path, [f"{i}.jpg" for i in range(5)], pooled, grid)
    tokens = [[1, 5, 2], [1, 6, 7, 8, 2], [1, 2], [1, 9, 2]]
    rows = [4, 0, 4, 0]
    pairs = CaptionPairs(store, rows, tokens, use_grid=True, group_images=True)
    batch = pairs.__getitems__([2, 1, 0, 3])
    index = batch["image_index"]
    assert batch["pooled"].shape == (2, 4) and batch["grid"].shape == (2, 3, 4)
    expected = CaptionPairs(store, rows, tokens, use_grid=True).__getitems__([2, 1, 0, 3])
    assert torch.equal(batch["pooled"][index], expected["pooled"])
    assert torch.equal(batch["grid"][index], expected["grid"])
    assert torch.equal(batch["tokens"], expected["tokens"])
