"""Benchmark: CPU inference of trained runs, by decoding and precision, speed and quality.

    .venv/bin/python bench/bench_inference.py --run runs/f8k --data ~/data/flickr8k \
        --split val --output bench/results/inference.json
    .venv/bin/python bench/bench_inference.py --run R1,R2,R3 --data ../shared/data/flickr8k-mini \
        --split val,test --no-speed --output bench/results/inference_mini.json

In one process, the runs' models taking turns in each setting:
- decodings: the plain beam of 3 (`--rerank none`); the default decoding (consensus re-ranking of
  8 candidates from a beam widened to 8); and consensus re-ranking of the 8 finished hypotheses
  a beam of 3 keeps (`--rerank-candidates-from finished`);
- precisions (`--quantize`): none (float32), int8, and bf16 where the CPU computes it natively.
Speed (the first run, the first split): images/s captioning image files (`Captioner.caption`,
decode + encode + decode, batches of 32), median of `--repeats` passes over `--images` images;
and images/s from cached float32 features (`caption_rows`, batches of 64; the decoder alone, in the
precision), the same way. Quality: every
image of each split decoded by every run (`evaluate_run`), CIDEr averaged over the runs per image,
with a 95% bootstrap interval over images, and the paired difference from float32 with the same
decoding, and from the default decoding in float32; each run's own CIDEr beside it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
from pathlib import Path

import numpy as np
from common import bootstrap, write_results

from captionkit.data import load_dataset
from captionkit.decoding import DecodingOptions
from captionkit.encoders.extraction import native_bf16
from captionkit.encoders.features import features_for_dataset
from captionkit.evaluation.captioner import Captioner
from captionkit.evaluation.evaluate import caption_rows, evaluate_run
from captionkit.models.quantize import decoder_precision, quantize_decoder
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


def feature_speed(trained, store, rows: list[int], reranker, repeats: int, quantize: str) -> float:
    """Images/s decoding cached float32 features (the decoder alone, in `quantize`'s precision)."""
    options = DecodingOptions()
    decoder = dataclasses.replace(trained, model=quantize_decoder(trained.model, quantize))

    def run():
        with decoder_precision(quantize):
            caption_rows(decoder, store, rows, options, reranker=reranker)

    return median_rate(run, len(rows), repeats)


def quality(run_dir: str, data: str, split: str, quantize: str, rerank) -> np.ndarray:
    ev = evaluate_run(run_dir, data, split=split, meteor=False, rerank=rerank, quantize=quantize)
    return np.array([ev.per_image[k]["CIDEr"] for k in sorted(ev.per_image)])


def speed_rows(args, precisions: list[str]) -> dict:
    """Images/s of the first run on the first split, each decoding and precision."""
    run, split = args.run.split(",")[0], args.split.split(",")[0]
    dataset = load_dataset(args.data)
    files = [dataset.path(r) for r in dataset.split(split)][: args.images]
    trained = load_checkpoint(run)
    store, records = features_for_dataset(dataset, encoder_for(trained))
    rows = store.rows([dataset.path(r) for r in records if r.split == split][: args.images])
    out = {"run": run, "split": split, "images": len(files), "settings": {}}
    for name, rerank in DECODINGS.items():
        reranker = run_reranker(trained, rerank, decoding=DecodingOptions())
        for quantize in precisions:
            row = {
                "files_images_per_s": file_speed(run, files, quantize, rerank, args.repeats),
                "features_images_per_s": feature_speed(
                    trained, store, rows, reranker, args.repeats, quantize
                ),
            }
            out["settings"][f"{name} | {quantize}"] = row
            print(f"speed {name} | {quantize}: {json.dumps(row)}", flush=True)
    return out


def quality_rows(runs: list[str], data: str, split: str, precisions: list[str]) -> dict:
    """Per decoding and precision: CIDEr of the runs' mean per image, each run's CIDEr, and the
    paired differences from float32 with the same decoding and from the default decoding."""
    scores, out = {}, {}
    default = ("default (8 candidates, wide beam)", "none")
    for name, rerank in DECODINGS.items():
        for quantize in precisions:
            per_run = [quality(run, data, split, quantize, rerank) for run in runs]
            scores[name, quantize] = s = np.mean(per_run, axis=0)  # [images]
            row = {"CIDEr": float(s.mean()), "interval": bootstrap(s),
                   "per_run": [float(r.mean()) for r in per_run]}  # fmt: skip
            for base in ((name, "none"), default):
                if base != (name, quantize) and base in scores:
                    d = s - scores[base]
                    row[f"vs {base[0]} {base[1]}"] = [float(d.mean()), *bootstrap(d)]
            out[f"{name} | {quantize}"] = row
            print(f"{split} {name} | {quantize}: {json.dumps(row)}", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="Run folders, comma-separated.")
    parser.add_argument("--data", required=True)
    parser.add_argument("--split", default="val", help="Splits, comma-separated.")
    parser.add_argument("--images", type=int, default=128, help="Images of the speed passes.")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-quality", action="store_true", help="Speed only.")
    parser.add_argument("--no-speed", action="store_true", help="Quality only.")
    parser.add_argument("--output", default="bench/results/inference.json")
    args = parser.parse_args()
    precisions = ["none", "int8"] + ["bf16"] * native_bf16()
    out = {"runs": args.run.split(",")}
    if not args.no_speed:
        out["speed"] = speed_rows(args, precisions)
    if not args.no_quality:
        out["quality"] = {
            split: quality_rows(out["runs"], args.data, split, precisions)
            for split in args.split.split(",")
        }
    write_results(args.output, out)


if __name__ == "__main__":
    main()
