"""Benchmark: train Show-and-Tell on flickr8k-mini through the CLI, then measure quality and speed.

Run from the project root (the data is not part of the project):
    .venv/bin/python bench/bench_flickr8k.py --data ../shared/data/flickr8k-mini --out runs/f8k

Reports, all measured in this run:
- training time per epoch (from the run's metrics.jsonl) and the best val CIDEr;
- test metrics with greedy and beam 3 (pycocoevalcap), next to a 1-nearest-neighbour retrieval
  baseline (the most consensual caption of the most similar training image, pooled features);
- feature extraction images/s from a cold cache (decode, resize, encode, write);
- captioning throughput from cached features, batched (64 images) versus one image at a time with
  the same code, greedy and beam 3; and the full image -> caption pipeline (decode, encode, beam 3).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from common import common_options, retrieval_baseline, throughput, write_results

from captionkit.cli import main as cli
from captionkit.data import load_dataset
from captionkit.decoding import DecodingOptions
from captionkit.encoders.features import features_for_dataset
from captionkit.evaluation.evaluate import evaluate_run
from captionkit.metrics import coco_metrics
from captionkit.models.run_folder import encoder_for, load_checkpoint
from captionkit.reranking import RerankOptions
from captionkit.serving import Captioner


def speed(run_dir: Path, dataset) -> dict:
    trained = load_checkpoint(run_dir)
    with tempfile.TemporaryDirectory() as cache:  # a cold cache: time the whole extraction
        start = time.perf_counter()
        store, _ = features_for_dataset(dataset, encoder_for(trained), Path(cache))
        extract_s = time.perf_counter() - start
    store, _ = features_for_dataset(dataset, encoder_for(trained))
    rows = store.rows([dataset.path(r) for r in dataset.split("test")])
    out = {"extract_img_s": len(dataset.records) / extract_s}
    for beam in (1, 3):
        out[f"beam{beam}_batched_img_s"] = throughput(trained, store, rows, beam, 64)
        out[f"beam{beam}_one_at_a_time_img_s"] = throughput(trained, store, rows, beam, 1)
    captioner = Captioner.load(run_dir)
    paths = [dataset.path(r) for r in dataset.split("test")]
    start = time.perf_counter()
    captioner.caption(
        paths, DecodingOptions(beam_size=3), batch_size=32, rerank=RerankOptions("none")
    )
    out["pipeline_beam3_img_s"] = len(paths) / (time.perf_counter() - start)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], parents=[common_options(output="flickr8k.json")]
    )
    parser.add_argument("--out", default="runs/f8k")
    parser.add_argument("--epochs", type=int, default=20)
    args = parser.parse_args()
    run_dir = Path(args.out)

    start = time.perf_counter()
    assert cli(["train", "--data", args.data, "--out", args.out, "--epochs", str(args.epochs)]) == 0
    train_s = time.perf_counter() - start
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    epoch_s = np.diff([0.0] + [r["elapsed_s"] for r in rows]).mean()

    results = {"train_total_s": train_s, "epoch_s": float(epoch_s),
               "best_val": max(rows, key=lambda r: r["val/CIDEr"])}  # fmt: skip
    for beam in (1, 3):
        ev = evaluate_run(run_dir, args.data, split="test", options=DecodingOptions(beam_size=beam),
                          rerank=RerankOptions("none"))  # fmt: skip
        results[f"test_beam{beam}"] = ev.metrics
    dataset = load_dataset(args.data)
    store, _ = features_for_dataset(dataset, encoder_for(load_checkpoint(run_dir)))
    knn = retrieval_baseline(dataset, store)
    results["test_1nn_retrieval"] = coco_metrics(knn, {r.filename: r.captions
                                                       for r in dataset.split("test")})  # fmt: skip
    results["speed"] = speed(run_dir, dataset)
    write_results(args.output, results)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
