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
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from captionkit.cli import main as cli
from captionkit.data import load_dataset, tokenize
from captionkit.decoding import DecodingOptions
from captionkit.encoders.features import features_for_dataset
from captionkit.evaluation.evaluate import caption_rows, evaluate_run
from captionkit.metrics import coco_metrics
from captionkit.metrics.cider_d import CiderD
from captionkit.models.run_folder import encoder_for, load_checkpoint
from captionkit.reranking import RerankOptions
from captionkit.serving import Captioner


def retrieval_baseline(dataset, store) -> dict[str, str]:
    """1-NN: for each test image, the training image with the most similar pooled feature, and
    of its captions the one with the highest CIDEr-D against its other captions."""
    train, test = dataset.split("train"), dataset.split("test")
    feats = np.asarray(store.pooled, dtype=np.float32)
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    train_feats = feats[store.rows([dataset.path(r) for r in train])]
    test_feats = feats[store.rows([dataset.path(r) for r in test])]
    nearest = (test_feats @ train_feats.T).argmax(axis=1)
    refs = {r.filename: [" ".join(tokenize(c)) for c in r.captions] for r in train}
    cider = CiderD(refs)
    consensus = {}
    for r in train:
        caps = refs[r.filename]
        scores = cider.score(caps, [r.filename] * len(caps))  # against all five, self included
        consensus[r.filename] = r.captions[int(np.argmax(scores))]
    return {t.filename: consensus[train[i].filename] for t, i in zip(test, nearest)}


def throughput(trained, store, rows, beam_size: int, batch_size: int) -> float:
    """Images per second of decoding from cached features."""
    options = DecodingOptions(beam_size=beam_size)
    start = time.perf_counter()
    for i in range(0, len(rows), batch_size):
        caption_rows(trained, store, rows[i : i + batch_size], options, batch_size)
    return len(rows) / (time.perf_counter() - start)


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
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data/flickr8k-mini")
    parser.add_argument("--out", default="runs/f8k")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--output", default="bench/results_flickr8k.json")
    args = parser.parse_args()
    run_dir = Path(args.out)

    start = time.perf_counter()
    assert cli(["train", "--data", args.data, "--out", args.out, "--epochs", str(args.epochs)]) == 0
    train_s = time.perf_counter() - start
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    epoch_s = np.diff([0.0] + [r["elapsed_s"] for r in rows]).mean()

    results = {"machine": f"{platform.processor() or platform.machine()}, "
               f"{torch.get_num_threads()} threads, torch {torch.__version__}",  # fmt: skip
               "train_total_s": train_s, "epoch_s": float(epoch_s),
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
    Path(args.output).write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
