"""Benchmark: a training option judged on 600 held-out images instead of the 75 of val.

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_cv_screen.py \
        --data ../shared/data/flickr8k-mini --out runs/cv --variants best,avg-cw --jobs 2

The training split is cut into `--folds` parts (`common.make_folds`, as bench_rerank_cv.py: each
part held out as `val`, the rest of the training split as `train`, the real val split as `test`,
the real test split never read). Each variant of bench/variants/quality.yaml (bench_quality.py's)
trains once per fold with `--seed`
(`OUT/foldK/VARIANT-sSEED`, kept if already there) and is decoded on both held-out splits (beam
3, `<unk>` forbidden, exact per-image CIDEr-D). Against the base variant, per fold: the gain on
the fold's held-out part and on the real val. The parts are disjoint, so their gains are pooled
over the whole training split; the real val is held out by every fold, so its per-image gains
are averaged over the folds. Both with a 95% bootstrap interval over images.
"""

from __future__ import annotations

import argparse
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from common import (
    bootstrap,
    common_options,
    load_variants,
    make_folds,
    run_scores,
    train_variant,
    write_results,
)

VARIANTS = load_variants("quality")


def train_and_score(variant: str, fold: Path, out: Path, seed: int) -> dict:
    """`variant` trained on `fold` (unless done) -> its per-image scores on val and test."""
    run = train_variant(VARIANTS, variant, seed, fold, out)
    return run_scores(run, str(fold))


def gains(variant: list[dict], base: list[dict]) -> dict:
    """Per held-out split: the variant's and the base's mean, and the gain with its interval."""
    out = {}
    for split, pooled in (("val", True), ("test", False)):
        diffs = [np.array([v[split][k] - b[split][k] for k in sorted(v[split])])
                 for v, b in zip(variant, base)]  # fmt: skip
        gain = np.concatenate(diffs) if pooled else np.mean(diffs, axis=0)
        out["held-out training images" if pooled else "real val"] = {
            "variant": float(np.mean([np.mean(list(v[split].values())) for v in variant])),
            "base": float(np.mean([np.mean(list(b[split].values())) for b in base])),
            "gain": float(gain.mean()), "ci95": bootstrap(gain), "images": len(gain),
            "per fold": [float(d.mean()) for d in diffs],
        }  # fmt: skip
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], parents=[common_options(output="cv_screen.json")]
    )
    parser.add_argument("--out", type=Path, default=Path("runs/cv"))
    parser.add_argument("--variants", default="best,avg-cw", help="The base first, then others.")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0, help="Of the folds and of training.")
    parser.add_argument("--jobs", type=int, default=1, help="Runs trained at a time.")
    args = parser.parse_args()
    names = args.variants.split(",")
    if unknown := [name for name in names if name not in VARIANTS]:
        parser.error(f"unknown variants {unknown} (see bench/variants/quality.yaml)")
    folds = make_folds(Path(args.data), args.out, args.folds, args.seed)
    jobs = [(name, fold, args.out / f"fold{k}") for name in names for k, fold in enumerate(folds)]
    with ThreadPoolExecutor(args.jobs) as pool:
        scores = list(pool.map(lambda job: train_and_score(*job, args.seed), jobs))
    per_variant = {name: scores[i * len(folds) : (i + 1) * len(folds)]
                   for i, name in enumerate(names)}  # fmt: skip
    summary = {name: gains(per_variant[name], per_variant[names[0]]) for name in names[1:]}
    summary = {"base": names[0], "folds": args.folds, "seed": args.seed, **summary}
    print(json.dumps(summary, indent=2))
    write_results(args.output, summary)


if __name__ == "__main__":
    main()
