"""Benchmark: which decoding options raise CIDEr-D over plain beam 3, paired over trained runs.

    .venv/bin/python bench/bench_decoding_options.py --runs R1,R2,... \
        --data ../shared/data/flickr8k-mini [--splits val,test] \
        [--output bench/results/decoding_options.json]

Every run is decoded on each split with every setting of SETTINGS (beam 3 with one option
changed), and every image scored with captionkit's exact CIDEr-D. The table gives each setting's
mean over runs and its paired difference to plain beam 3 (same runs, same images) with a 95%
bootstrap interval over images of the run-averaged differences: a decoding default is chosen
on val, its test figure reported.
"""

from __future__ import annotations

import argparse

import numpy as np
from common import PLAIN, bootstrap, common_options, per_image_cider, write_results

from captionkit.decoding import DecodingOptions
from captionkit.evaluation.evaluate import evaluate_run

SETTINGS: dict[str, DecodingOptions] = {
    "beam 3": DecodingOptions(beam_size=3),
    "bad endings": DecodingOptions(beam_size=3, bad_endings=True),
    "no repeated 3-gram": DecodingOptions(beam_size=3, no_repeat_ngram_size=3),
    "no repeated 2-gram": DecodingOptions(beam_size=3, no_repeat_ngram_size=2),
    "length penalty average": DecodingOptions(beam_size=3, length_penalty="average"),
    "length penalty 0.5": DecodingOptions(beam_size=3, length_penalty=0.5),
    "bad endings + no repeated 3-gram": DecodingOptions(
        beam_size=3, bad_endings=True, no_repeat_ngram_size=3
    ),
}


def per_image(run: str, data: str, split: str,
              options: DecodingOptions) -> tuple[np.ndarray, float]:  # fmt: skip
    """Per-image CIDEr-D (in image order) and mean caption length of one run and setting."""
    ev = evaluate_run(run, data, split=split, meteor=False, options=options, rerank=PLAIN)
    keys = sorted(ev.predictions)
    lengths = [len(ev.predictions[k].split()) for k in keys]
    return per_image_cider(ev.predictions, ev.references), float(np.mean(lengths))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        parents=[common_options(output="decoding_options.json")],
    )
    parser.add_argument("--runs", required=True, help="Comma-separated run folders.")
    parser.add_argument("--splits", default="val,test")
    args = parser.parse_args()
    runs = args.runs.split(",")
    results: dict = {}
    for split in args.splits.split(","):
        scores = {name: [per_image(r, args.data, split, o) for r in runs]
                  for name, o in SETTINGS.items()}  # fmt: skip
        base = np.mean([s for s, _ in scores["beam 3"]], axis=0)  # [images], run-averaged
        results[split] = {}
        for name, per_run in scores.items():
            mean = np.mean([s for s, _ in per_run], axis=0)
            results[split][name] = {
                "mean": float(mean.mean()),
                "per_run": [float(s.mean()) for s, _ in per_run],
                "words": float(np.mean([w for _, w in per_run])),
                "vs_beam3": float((mean - base).mean()),
                "vs_beam3_ci95": bootstrap(mean - base),
            }
    write_results(args.output, {"runs": runs, **results})
    for split, rows in results.items():
        print(f"\n{split} ({len(runs)} runs)\n| setting | CIDEr | words | Δ vs beam 3 (95% CI) |")
        print("| --- | --- | --- | --- |")
        for name, r in rows.items():
            ci = r["vs_beam3_ci95"]
            print(f"| {name} | {r['mean']:.3f} | {r['words']:.1f} | {r['vs_beam3']:+.3f} "
                  f"({ci[0]:+.3f}…{ci[1]:+.3f}) |")  # fmt: skip


if __name__ == "__main__":
    main()
