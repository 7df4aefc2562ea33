"""Benchmark: fine-tuning the encoder's last blocks after training the decoder on cached features.

    .venv/bin/python bench/bench_finetune.py --data ../shared/data/flickr8k-mini

The usual recipe, in one run:
1. `base`: the default Show-and-Tell trained on cached EfficientNet-Lite0 features (`--epochs`);
2. `finetuned`: started from `base` (`--init`), the last `--blocks` encoder blocks trained with
   the decoder on augmented images decoded on the fly (`--finetune-epochs`);
3. `control`: started from `base` too, as many more epochs on cached features only, so that the
   gain of fine-tuning is not mistaken for the gain of training the decoder longer.
Each is evaluated on the test split with beam 3; the seconds per epoch come from the runs'
`metrics.jsonl`. `--limit N` keeps N images per split for a quick smoke run of the script.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from common import common_options, write_results

from captionkit.data import load_dataset
from captionkit.decoding import DecodingOptions
from captionkit.evaluation.evaluate import evaluate_run
from captionkit.reranking import RerankOptions
from captionkit.training import DataConfig, RunConfig
from captionkit.training.train import train


def limited_data(data: str, limit: int, out: Path) -> tuple[str, str | None]:
    """The first `limit` images of each split as a Karpathy file, for smoke runs."""
    if not limit:
        return data, None
    dataset = load_dataset(data)
    kept = [r for split in ("train", "val", "test") for r in dataset.split(split)[:limit]]
    images = [{"filename": r.filename, "split": r.split,
               "sentences": [{"raw": c} for c in r.captions]} for r in kept]  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    path = out / "dataset_limited.json"
    path.write_text(json.dumps({"images": images}))
    return str(path), str(dataset.image_root)


def run_stage(name: str, config: RunConfig, args, data: str, images: str | None) -> dict:
    """Train one run, then evaluate its best checkpoint on the test split with beam 3."""
    run_dir = Path(args.out) / name
    start = time.perf_counter()
    best = train(config, run_dir)
    out = {"train_s": round(time.perf_counter() - start, 1), "best_val": best}
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    out["epoch_s"] = round(rows[-1]["elapsed_s"] / len(rows), 2)
    start = time.perf_counter()
    out["test_beam3"] = evaluate_run(
        run_dir, data, images, options=DecodingOptions(beam_size=3), rerank=RerankOptions("none")
    ).metrics
    out["evaluate_s"] = round(time.perf_counter() - start, 1)  # with the fine-tuned features
    print(f"{name}: {json.dumps(out)}")
    return out


def stage_config(args, data: str, images: str | None, epochs: int, init: str | None) -> RunConfig:
    config = RunConfig(data=DataConfig(data, images))
    config.train.epochs, config.train.init, config.train.workers = epochs, init, args.workers
    return config


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], parents=[common_options(output="finetune.json")]
    )
    parser.add_argument("--out", default="runs/finetune")
    parser.add_argument("--epochs", type=int, default=15, help="decoder on cached features")
    parser.add_argument("--finetune-epochs", type=int, default=5)
    parser.add_argument("--blocks", type=int, default=2, help="encoder blocks fine-tuned")
    parser.add_argument("--encoder-lr", type=float, default=1e-4)
    parser.add_argument("--lr", type=float, default=5e-4, help="decoder, after the first stage")
    workers = min(8, os.cpu_count() or 1)
    parser.add_argument("--workers", type=int, default=workers, help="image decoding processes")
    parser.add_argument("--limit", type=int, default=0, help="images per split (smoke runs)")
    args = parser.parse_args()
    data, images = limited_data(args.data, args.limit, Path(args.out) / "data")

    results = {"settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}}
    base = stage_config(args, data, images, args.epochs, None)
    results["base"] = run_stage("base", base, args, data, images)
    base_dir = str(Path(args.out) / "base")
    finetune = stage_config(args, data, images, args.finetune_epochs, base_dir)
    finetune.encoder.finetune, finetune.encoder.finetune_blocks = True, args.blocks
    finetune.encoder.lr, finetune.optim.lr = args.encoder_lr, args.lr
    results["finetuned"] = run_stage("finetuned", finetune, args, data, images)
    control = stage_config(args, data, images, args.finetune_epochs, base_dir)
    control.optim.lr = args.lr
    results["control"] = run_stage("control", control, args, data, images)

    write_results(args.output, results)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
