"""Benchmark: is data loading ever the bottleneck? Loader batches/s alone vs training steps/s.

    .venv/bin/python bench/bench_loader.py --data ../shared/data/flickr8k-mini \
        [--output bench/results/loader.json]

Builds the training batches exactly as `train` does (memory-mapped features and token ids,
length-bucketed batches of 64), times three passes of the loader alone, then times training steps
(forward, backward, Adam) of the default Show-and-Tell on the same batches.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from common import common_options, write_results

from captionkit.data import Vocabulary, load_dataset
from captionkit.encoders import create_encoder
from captionkit.encoders.features import features_for_dataset
from captionkit.models import create_model
from captionkit.training.feature_batches import BucketBatchSampler, CaptionPairs


def whole_batch(batch: dict) -> dict:
    """The collate function of the training loader: `CaptionPairs` reads a whole batch at once."""
    return batch


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], parents=[common_options(output="loader.json")]
    )
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()

    dataset = load_dataset(args.data)
    store, records = features_for_dataset(dataset, create_encoder())
    train = [r for r in records if r.split == "train"]
    vocab = Vocabulary.build((c for r in train for c in r.captions), 5)
    pairs = [(dataset.path(r), c) for r in train for c in r.captions]
    with tempfile.TemporaryDirectory() as tmp:
        data = CaptionPairs(store, store.rows([p for p, _ in pairs]),
                            [vocab.encode(c, 20) for _, c in pairs], False,
                            Path(tmp) / "tokens.npy")  # fmt: skip
        sampler = BucketBatchSampler(data.lengths, args.batch_size, seed=0)
        loader = torch.utils.data.DataLoader(data, batch_sampler=sampler, collate_fn=whole_batch)
        start, n = time.perf_counter(), 0
        for epoch in range(3):
            sampler.set_epoch(epoch)
            n += sum(1 for _ in loader)
        loader_s = (time.perf_counter() - start) / n
        batches = list(loader)

    model = create_model("show_tell", vocab_size=len(vocab), feature_dim=store.pooled.shape[1])
    opt = torch.optim.Adam(model.parameters(), lr=5e-4)
    start = time.perf_counter()
    for batch in batches:
        tokens = batch["tokens"]
        logits = model(batch["pooled"], None, tokens[:, :-1])
        loss = F.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten(), ignore_index=0)
        opt.zero_grad()
        loss.backward()
        opt.step()
    step_s = (time.perf_counter() - start) / len(batches)
    result = {
        "batches": len(batches),
        "loader_batches_per_s": 1 / loader_s,
        "train_steps_per_s": 1 / step_s,
        "loader_share_of_step": loader_s / step_s,
    }
    write_results(args.output, result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
