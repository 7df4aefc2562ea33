"""Benchmark: feature extraction, full pipeline vs the encoder's forward pass alone, same run.

    .venv/bin/python bench/bench_extract.py --data ../shared/data/flickr8k-mini --images 256

The pipeline is `extract_features` from a cold cache (decode, resize, crop, normalise, forward,
write fp16 to disk) with 0, 1 and 2 decoding worker processes; the reference is the forward pass
on pre-decoded tensors at the same batch size, NCHW and channels_last.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from captionkit.data import load_dataset
from captionkit.data.images import load_image
from captionkit.encoders import create_encoder, extract_features


def forward_only(encoder, pixels: torch.Tensor, batch: int, channels_last: bool) -> float:
    model = encoder.to(
        memory_format=torch.channels_last if channels_last else torch.contiguous_format
    )
    x = pixels.contiguous(memory_format=torch.channels_last) if channels_last else pixels
    with torch.inference_mode():
        model(x[:batch])  # warm-up
        start = time.perf_counter()
        for i in range(0, len(x), batch):
            model(x[i : i + batch])
    return len(x) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data/flickr8k-mini")
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    dataset = load_dataset(args.data)
    paths = [dataset.path(r) for r in dataset.records[: args.images]]
    encoder = create_encoder()
    transform = encoder.transform()
    pixels = torch.stack([transform(load_image(p)) for p in paths])
    result = {
        "images": len(paths),
        "forward_only_nchw_img_s": forward_only(encoder, pixels, args.batch_size, False),
        "forward_only_channels_last_img_s": forward_only(encoder, pixels, args.batch_size, True),
    }
    for workers in (0, 1, 2):
        with tempfile.TemporaryDirectory() as cache:
            start = time.perf_counter()
            extract_features(encoder, paths, Path(cache), True, args.batch_size, workers)
            result[f"pipeline_{workers}_workers_img_s"] = len(paths) / (time.perf_counter() - start)
    best = max(v for k, v in result.items() if k.startswith("pipeline"))
    result["pipeline_over_forward_only"] = best / result["forward_only_channels_last_img_s"]
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
