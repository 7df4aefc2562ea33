"""Benchmark: the three decoders on flickr8k-mini, same features, same data, same run.

    .venv/bin/python bench/bench_models.py --data ../shared/data/flickr8k-mini --epochs 15

Each model is trained with its default hyperparameters (Adam 5e-4, batch 64, best epoch by val
CIDEr), then evaluated on the test split with greedy decoding and beam 3, and its captioning
throughput from cached features is measured at batch 64 and batch 1.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from bench_flickr8k import throughput

from captionkit.data import load_dataset
from captionkit.encoders.features import features_for_dataset
from captionkit.evaluation.evaluate import encoder_for, evaluate_run
from captionkit.models.checkpoint import load_checkpoint
from captionkit.training import DataConfig, RunConfig
from captionkit.training.train import train


def run_model(name: str, args) -> dict:
    run_dir = Path(args.out) / name
    config = RunConfig(model=name, data=DataConfig(args.data))
    config.train.epochs = args.epochs
    start = time.perf_counter()
    best = train(config, run_dir)
    out = {"train_s": time.perf_counter() - start, "best_val": best}
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    out["epoch_s"] = rows[-1]["elapsed_s"] / len(rows)
    for beam in (1, 3):
        out[f"test_beam{beam}"] = evaluate_run(run_dir, args.data, beam_size=beam).metrics
    trained = load_checkpoint(run_dir)
    dataset = load_dataset(args.data)
    store, _ = features_for_dataset(dataset, encoder_for(trained))
    rows = store.rows([dataset.path(r) for r in dataset.split("test")])
    for beam in (1, 3):
        for batch in (64, 1):
            out[f"beam{beam}_batch{batch}_img_s"] = throughput(trained, store, rows, beam, batch)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data/flickr8k-mini")
    parser.add_argument("--out", default="runs/models")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--models", default="show_tell,attention,transformer")
    parser.add_argument("--output", default="bench/results_models.json")
    args = parser.parse_args()
    results = {name: run_model(name, args) for name in args.models.split(",")}
    Path(args.output).write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
