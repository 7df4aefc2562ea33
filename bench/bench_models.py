"""Benchmark: the three decoders on flickr8k-mini, same features, same data, same run.

    .venv/bin/python bench/bench_models.py --data ../shared/data/flickr8k-mini

Each model is trained through `captionkit train --config configs/flickr8k-mini/NAME.yaml` (best
epoch by val CIDEr, greedy), then evaluated on the test split with greedy decoding and beam 3.
The 1-NN retrieval baseline is scored in the same run as the reference. Decoding speed is
measured by bench_decoding.py on the run folders this script leaves in --out.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from common import (
    PLAIN,
    ROOT,
    bootstrap,
    common_options,
    per_image_cider,
    retrieval_baseline,
    write_results,
)

from captionkit.cli import main as cli
from captionkit.data import load_dataset
from captionkit.decoding import DecodingOptions
from captionkit.encoders.features import features_for_dataset
from captionkit.evaluation.evaluate import evaluate_run
from captionkit.metrics import coco_metrics
from captionkit.models.run_folder import encoder_for, load_checkpoint

# The recipes of the three decoders (docs/experiments.md): `captionkit train --config` with these
# files (the repository's configs/flickr8k-mini/NAME.yaml, named relative to the current folder).
CONFIGS = Path(os.path.relpath(ROOT / "configs" / "flickr8k-mini"))


def run_model(name: str, args) -> dict:
    run_dir = Path(args.out) / name
    config = CONFIGS / f"{name}.yaml"
    argv = ["train", "--config", str(config), "--data", args.data, "--out", str(run_dir)]
    start = time.perf_counter()
    assert cli(argv) == 0
    out = {"command": "captionkit " + " ".join(argv), "train_s": time.perf_counter() - start}
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    out["epoch_s"] = rows[-1]["elapsed_s"] / len(rows)
    out["best_val"] = max(rows, key=lambda r: r["val/CIDEr"])
    for beam in (1, 3):
        out[f"test_beam{beam}"] = evaluate_run(
            run_dir, args.data, options=DecodingOptions(beam_size=beam), rerank=PLAIN
        ).metrics
    return out


def intervals(args, names: list[str]) -> dict:
    """Test CIDEr-D at beam 3 per model with its bootstrap interval, and each model's paired
    difference to the first one: 75 test images make single figures noisy."""
    scores = {}
    for name in names:
        ev = evaluate_run(
            Path(args.out) / name,
            args.data,
            options=DecodingOptions(beam_size=3),
            meteor=False,
            rerank=PLAIN,
        )
        scores[name] = per_image_cider(ev.predictions, ev.references)
    out = {n: {"cider": float(s.mean()), "ci95": bootstrap(s)} for n, s in scores.items()}
    for name in names[1:]:
        diff = scores[name] - scores[names[0]]
        out[name][f"minus_{names[0]}"] = {"mean": float(diff.mean()), "ci95": bootstrap(diff)}
    return out


def nearest_neighbour(args, run_dir: Path) -> dict:
    dataset = load_dataset(args.data)
    store, _ = features_for_dataset(dataset, encoder_for(load_checkpoint(run_dir)))
    references = {r.filename: r.captions for r in dataset.split("test")}
    return coco_metrics(retrieval_baseline(dataset, store), references)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], parents=[common_options(output="models.json")]
    )
    parser.add_argument("--out", default="runs/models")
    parser.add_argument("--models", default="show_tell,attention,transformer")
    parser.add_argument("--intervals-only", action="store_true",
                        help="Only the bootstrap intervals of existing runs in --out.")  # fmt: skip
    args = parser.parse_args()
    names = args.models.split(",")
    if args.intervals_only:
        print(json.dumps(intervals(args, names), indent=2))
        return
    results = {name: run_model(name, args) for name in names}
    results["1nn_retrieval"] = nearest_neighbour(args, Path(args.out) / names[0])
    results["test_beam3_cider_intervals"] = intervals(args, names)
    write_results(args.output, results)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
