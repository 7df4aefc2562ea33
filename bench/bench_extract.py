"""Benchmark: feature extraction, full pipeline vs the encoder's forward pass alone, same run.

    .venv/bin/python bench/bench_extract.py --data ../shared/data/flickr8k-mini --images 256 \
        [--device cpu|cuda] [--amp bf16|fp16] [--output bench/results/extract.json]

The pipeline is `extract_features` from a cold cache (decode, resize, crop, normalise, forward,
write fp16 to disk) with 0, 1 and 2 decoding worker processes; the reference is the forward pass
on pre-decoded tensors at the same batch size, NCHW and channels_last. Last, the incremental case:
a store of all images but one exists, and the store of all of them is built (rows copied, one
image extracted).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from common import common_options, forward_only, write_results

from captionkit.data import load_dataset
from captionkit.data.image_files import load_image
from captionkit.encoders import create_encoder, extract_features


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], parents=[common_options(output="extract.json")]
    )
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--amp", choices=["bf16", "fp16"], default=None)
    args = parser.parse_args()
    dataset = load_dataset(args.data)
    paths = [dataset.path(r) for r in dataset.records[: args.images]]
    encoder = create_encoder()
    transform = encoder.transform()
    pixels = torch.stack([transform(load_image(p)) for p in paths])
    run = {"device": args.device, "amp": args.amp}
    result = {"images": len(paths), **run}
    for name, channels_last in (("nchw", False), ("channels_last", True)):
        speed = forward_only(encoder, pixels, args.batch_size, channels_last, **run)
        result[f"forward_only_{name}_img_s"] = speed
    for workers in (0, 1, 2):
        with tempfile.TemporaryDirectory() as cache:
            start = time.perf_counter()
            extract_features(encoder, paths, Path(cache), True, args.batch_size, workers, **run)
            result[f"pipeline_{workers}_workers_img_s"] = len(paths) / (time.perf_counter() - start)
    with tempfile.TemporaryDirectory() as cache:
        extract_features(encoder, paths[:-1], Path(cache), True, args.batch_size, 1, **run)
        start = time.perf_counter()
        store = extract_features(encoder, paths, Path(cache), True, args.batch_size, 1, **run)
        result["incremental_one_new_image_s"] = time.perf_counter() - start
        result["incremental_report"] = store.report.summary()
    best = max(v for k, v in result.items() if k.startswith("pipeline"))
    result["pipeline_over_forward_only"] = best / result["forward_only_channels_last_img_s"]
    write_results(args.output, result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
