"""Benchmark: captionkit on Flickr8k at its published size, beside the published figures.

    .venv/bin/python bench/bench_flickr8k_full.py --data ~/data/flickr8k --runs runs/f8k \
        --output bench/results/flickr8k.json

`~/data/flickr8k` is the dataset folder `make_dataset.sh` of the shared Flickr8k material builds
(6,000 train and 1,000 val images; the official test split is held out). Each run folder is a
`captionkit train --data ~/data/flickr8k --out RUN` run. Per run, on the val split: BLEU-1..4,
METEOR, ROUGE-L and CIDEr (pycocoevalcap, Java PTB tokenizer: what `captionkit evaluate` reports)
with the default decoding (beam 3, consensus re-ranking of 8 candidates) and with the plain beam
(`--rerank none`), a 95% bootstrap interval of CIDEr over the images, the paired gain of the
default decoding, and the run's training minutes (its metrics files, both phases). With several
runs, also their ensemble (`decoding.Ensemble`, `--ensemble`), and each run's CIDEr against the
first run's, paired over the images, with its interval. The published figures (official test split,
other features and full-size photos) are printed beside them.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from common import bootstrap, write_results

from captionkit.evaluation.evaluate import evaluate_run
from captionkit.reranking import RerankOptions

METRICS = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr")
# Xu et al. 2015, Table 1 (and Karpathy & Fei-Fei 2015): the official test split, x 1/100.
PUBLISHED = {
    "NeuralTalk (Karpathy & Fei-Fei 2015)": [0.579, 0.383, 0.245, 0.160, None],
    "Show and Tell (Vinyals et al. 2015)": [0.63, 0.41, 0.27, None, None],
    "log-bilinear (Kiros et al. 2014)": [0.656, 0.424, 0.277, 0.177, 0.1731],
    "Show, Attend and Tell, soft (Xu et al. 2015)": [0.67, 0.448, 0.299, 0.195, 0.1893],
    "Show, Attend and Tell, hard (Xu et al. 2015)": [0.67, 0.457, 0.314, 0.213, 0.2030],
}
DECODINGS = {"default decoding": RerankOptions(), "plain beam 3": RerankOptions("none")}


def training_minutes(run: Path) -> float:
    """Minutes of training a run's metrics files record (cross-entropy, then SCST if any)."""
    total = 0.0
    for metrics in (run / "metrics.jsonl", run / "scst" / "metrics.jsonl"):
        if metrics.exists():
            rows = [json.loads(x) for x in metrics.read_text().splitlines() if x.strip()]
            total += max(r["elapsed_s"] for r in rows)
    return total / 60


def score(runs: list[str], data: str, split: str) -> dict:
    """Metrics, CIDEr interval and seconds of each decoding for a run (several: an ensemble)."""
    out, per_image = {}, {}
    for name, rerank in DECODINGS.items():
        start = time.perf_counter()
        ev = evaluate_run(runs if len(runs) > 1 else runs[0], data, split=split, rerank=rerank)
        cider = np.array([ev.per_image[k]["CIDEr"] for k in sorted(ev.per_image)])
        per_image[name] = cider
        out[name] = {**{m: ev.metrics[m] for m in METRICS}, "CIDEr_interval": bootstrap(cider),
                     "images": len(cider), "seconds": time.perf_counter() - start,
                     "decoding": ev.rerank.describe() if ev.rerank else "beam 3"}  # fmt: skip
    gain = per_image["default decoding"] - per_image["plain beam 3"]
    out["default gain"] = {"CIDEr": float(gain.mean()), "interval": bootstrap(gain)}
    out["per_image"] = {name: cider.tolist() for name, cider in per_image.items()}
    return out


def paired(results: dict, first: str) -> dict:
    """Each other run's CIDEr minus the first run's, per decoding, paired over the images
    (every run scores the same images, in file-name order)."""
    base, out = results["runs"][first]["per_image"], {}
    for run, row in results["runs"].items():
        if run != first:
            diffs = {d: np.array(row["per_image"][d]) - np.array(base[d]) for d in DECODINGS}
            out[f"{run} - {first}"] = {d: [float(x.mean()), *bootstrap(x)]
                                       for d, x in diffs.items()}  # fmt: skip
    return out


def table(results: dict) -> str:
    """The Markdown table of BENCHMARKS.md "Flickr8k"."""
    lines = ["| model | split | " + " | ".join(METRICS) + " | train min |",
             "| --- " * (len(METRICS) + 3) + "|"]  # fmt: skip
    for name, row in results["runs"].items():
        for decoding in DECODINGS:
            r = row[decoding]
            lo, hi = r["CIDEr_interval"]
            cider = f"{r['CIDEr']:.3f} ({lo:.3f}–{hi:.3f})"
            cells = [f"{r[m]:.3f}" for m in METRICS[:-1]] + [cider]
            minutes = f"{row['train_minutes']:.0f}" if row.get("train_minutes") else "-"
            lines.append(f"| {name}, {decoding} | val | " + " | ".join(cells) + f" | {minutes} |")
    for name, (b1, b2, b3, b4, meteor) in PUBLISHED.items():
        cells = [f"{x:.3f}" if x is not None else "-" for x in (b1, b2, b3, b4, meteor)]
        lines.append(f"| {name} | official test | " + " | ".join(cells) + " | - | - | - |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="The Flickr8k dataset folder.")
    parser.add_argument("--runs", required=True, help="Comma-separated run folders.")
    parser.add_argument("--ensemble", action="store_true", help="Also score the runs' ensemble.")
    parser.add_argument("--split", default="val")
    parser.add_argument("--output", default="bench/results/flickr8k.json")
    args = parser.parse_args()
    runs = args.runs.split(",")
    results = {"data": args.data, "split": args.split, "runs": {}}
    for run in runs:
        results["runs"][run] = {**score([run], args.data, args.split),
                                "train_minutes": training_minutes(Path(run)),
                                "config": json.loads((Path(run) / "config.json").read_text())[
                                    "run"]}  # fmt: skip
        shown = {k: v for k, v in results["runs"][run].items() if k not in ("config", "per_image")}
        print(json.dumps(shown))
    if args.ensemble and len(runs) > 1:
        results["runs"]["ensemble of " + " + ".join(runs)] = score(runs, args.data, args.split)
    if len(results["runs"]) > 1:
        results["paired"] = paired(results, runs[0])
        print(json.dumps(results["paired"], indent=1))
    write_results(args.output, results)
    print(table(results))


if __name__ == "__main__":
    main()
