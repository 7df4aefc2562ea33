"""Benchmark: CPU inference of a trained run, by decoding and precision, speed and quality.

    .venv/bin/python bench/bench_inference.py --run runs/f8k --data ~/data/flickr8k \
        --split val --output bench/results/inference.json

In one process, the run's model taking turns in each setting:
- decodings: the plain beam of 3 (`--rerank none`); the default decoding (consensus re-ranking of
  8 candidates from a beam widened to 8); and consensus re-ranking of the 8 finished hypotheses
  a beam of 3 keeps (`--rerank-candidates-from finished`);
- precisions (`--quantize`): none (float32), int8, and bf16 where the CPU computes it natively.
Speed: images/s captioning image files (`Captioner.caption`, decode + encode + decode, batches
of 32), median of `--repeats` passes over `--images` images of the split; and images/s from
cached features (`caption_rows`, batches of 64), the same way. Quality: every image of the split
decoded (`evaluate_run`), CIDEr with a 95% bootstrap interval, and the paired difference from
float32 with the same decoding, and from the default decoding in float32.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
from common import bootstrap, write_results

from captionkit.data import load_dataset
from captionkit.decoding import DecodingOptions
from captionkit.encoders.extraction import native_bf16
from captionkit.evaluation.captioner import Captioner
from captionkit.evaluation.evaluate import caption_rows, evaluate_run
from captionkit.models.run_folder import encoder_for, load_checkpoint
from captionkit.reranking import RerankOptions, run_reranker

DECODINGS = {
    "plain beam 3": RerankOptions("none"),
    "default (8 candidates, wide beam)": RerankOptions(),
    "8 finished of beam 3": RerankOptions(candidates_from="finished"),
}


def median_rate(run, n: int, repeats: int) -> float:
    """Images/s: the median of `repeats` passes of `run()` over `n` images (one untimed first)."""
    run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return n / statistics.median(times)


def file_speed(run_dir: str, files: list[Path], quantize: str, rerank, repeats: int) -> float:
    captioner = Captioner.load(run_dir, quantize=quantize)
    return median_rate(lambda: captioner.caption(files, rerank=rerank), len(files), repeats)


def feature_speed(run_dir: str, data: str, split: str, n: int, rerank, repeats: int) -> float:
    """Images/s decoding cached float32 features (the decoder alone, float32)."""
    from captionkit.encoders.features import features_for_dataset

    trained = load_checkpoint(run_dir)
    dataset = load_dataset(data)
    store, records = features_for_dataset(dataset, encoder_for(trained))
    rows = store.rows([dataset.path(r) for r in records if r.split == split][:n])
    options = DecodingOptions()
    reranker = run_reranker(trained, rerank, decoding=options)
    return median_rate(lambda: caption_rows(trained, store, rows, options, reranker=reranker),
                       len(rows), repeats)  # fmt: skip


def quality(run_dir: str, data: str, split: str, quantize: str, rerank) -> np.ndarray:
    ev = evaluate_run(run_dir, data, split=split, meteor=False, rerank=rerank, quantize=quantize)
    return np.array([ev.per_image[k]["CIDEr"] for k in sorted(ev.per_image)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--split", default="val")
    parser.add_argument("--images", type=int, default=128, help="Images of the speed passes.")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-quality", action="store_true", help="Speed only.")
    parser.add_argument("--output", default="bench/results/inference.json")
    args = parser.parse_args()
    precisions = ["none", "int8"] + ["bf16"] * native_bf16()
    dataset = load_dataset(args.data)
    files = [dataset.path(r) for r in dataset.split(args.split)][: args.images]
    out = {"run": args.run, "split": args.split, "settings": {}}
    scores = {}
    for name, rerank in DECODINGS.items():
        rate = feature_speed(args.run, args.data, args.split, args.images, rerank, args.repeats)
        for quantize in precisions:
            row = {"files_images_per_s": file_speed(args.run, files, quantize, rerank,
                                                    args.repeats)}  # fmt: skip
            if quantize == "none":
                row["features_images_per_s"] = rate
            if not args.no_quality:
                scores[name, quantize] = s = quality(args.run, args.data, args.split, quantize,
                                                     rerank)  # fmt: skip
                row.update(CIDEr=float(s.mean()), interval=bootstrap(s))
                for base in ((name, "none"), ("default (8 candidates, wide beam)", "none")):
                    if base != (name, quantize) and base in scores:
                        d = s - scores[base]
                        row[f"vs {base[0]} {base[1]}"] = [float(d.mean()), *bootstrap(d)]
            out["settings"][f"{name} | {quantize}"] = row
            print(f"{name} | {quantize}: {json.dumps(row)}", flush=True)
    write_results(args.output, out)


if __name__ == "__main__":
    main()
