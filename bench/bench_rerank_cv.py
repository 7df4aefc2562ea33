"""Benchmark: which re-ranker wins, judged on more images than the 75 of val.

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_rerank_cv.py \
        --data ../shared/data/flickr8k-mini --out runs/cv --folds 5 --jobs 2

The training split is cut into `--folds` parts (`common.make_folds`). For each part, a dataset
folder with the same images: that part as `val` (held out), the rest of the training split as
`train`, the real val split as `test` (held out as well), and no test split at all: the real test
images are never read. `captionkit train` (the default recipe) trains one run per fold; each run is
then decoded on its two held-out splits with beam 3 alone and with each re-ranker (5 candidates,
`<unk>` forbidden, exact per-image CIDEr-D). Every training image is held out once, so the
re-rankers are compared over the whole training split (600 images on flickr8k-mini) instead of 75.

`--grid sweep` scores the default re-ranker's settings instead, one changed at a time (candidates,
weight of the log-probability, neighbours k), each against the default re-ranker:

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_rerank_cv.py --grid sweep \
        --out runs/cv --jobs 2 --output bench/results/rerank_cv_sweep.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np
from common import PLAIN, bootstrap, common_options, make_folds, split_scores, write_results

from captionkit.reranking import RerankOptions

# "default" is the default re-ranker when the sweep ran: 5 candidates, weight 0.3, k 60. The sweep
# made 8 candidates the default.
DEFAULT = RerankOptions("consensus", candidates=5, weight=0.3, k=60)
GRIDS = {
    "methods": {
        "beam 3": PLAIN,
        "consensus": RerankOptions("consensus", candidates=5),
        "mbr": RerankOptions("mbr", candidates=5),
    },
    "sweep": {
        "default": DEFAULT,
        "beam 3": PLAIN,
        **{f"candidates {c}": replace(DEFAULT, candidates=c) for c in (3, 8)},
        **{f"weight {w:g}": replace(DEFAULT, weight=w) for w in (0.15, 0.5)},
        **{f"k {k}": replace(DEFAULT, k=k) for k in (20, 120)},
    },
}
BASES = {"methods": "beam 3", "sweep": "default"}


def train_fold(fold: Path, run: Path, seed: int) -> Path:
    """The default recipe on one fold, unless the run folder already has its model."""
    if not (run / "model.safetensors").exists():
        argv = ["train", "--data", str(fold), "--out", str(run), "--seed", str(seed)]
        subprocess.run([sys.executable, "-m", "captionkit", *argv], check=True)
    return run


def fold_scores(run: Path, fold: Path, grid: str) -> dict:
    """setting -> held-out split -> image -> CIDEr-D, kept in the run folder once computed."""
    path = run / ("bench_rerank_cv.json" if grid == "methods" else f"bench_rerank_cv_{grid}.json")
    if not path.exists():
        scores = {name: {split: split_scores(run, fold, split, rerank) for split in ("val", "test")}
                  for name, rerank in GRIDS[grid].items()}  # fmt: skip
        path.write_text(json.dumps(scores))
    return json.loads(path.read_text())


def summarise(scores: list[dict], base: str = "beam 3") -> dict:
    """Per held-out split: each setting's mean CIDEr-D and its gain over `base`, with a bootstrap
    interval over images. The folds' `val` images are distinct, so they are pooled; the real val
    split is held out by every fold, so its per-image gains are averaged over the folds."""
    out = {}
    for split, pooled in (("val", True), ("test", False)):
        out[split] = {}
        for name in scores[0]:
            diffs = [[s[name][split][k] - s[base][split][k] for k in sorted(s[name][split])]
                     for s in scores]  # fmt: skip
            means = [np.mean(list(s[name][split].values())) for s in scores]
            gain = np.concatenate(diffs) if pooled else np.mean(diffs, axis=0)
            raised = int(sum(np.mean(d) > 0 for d in diffs))
            out[split][name] = {"CIDEr": float(np.mean(means)), "gain": float(gain.mean()),
                                "ci95": bootstrap(gain), "images": len(gain),
                                "folds raised": raised}  # fmt: skip
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], parents=[common_options(output="rerank_cv.json")]
    )
    parser.add_argument("--out", type=Path, default=Path("runs/cv"))
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0, help="Of the folds and of training.")
    parser.add_argument("--jobs", type=int, default=1, help="Folds trained at a time.")
    parser.add_argument("--grid", choices=list(GRIDS), default="methods",
                        help="methods: none, consensus, MBR; sweep: its settings")  # fmt: skip
    args = parser.parse_args()
    folds = make_folds(Path(args.data), args.out, args.folds, args.seed)
    runs = [args.out / f"fold{k}" for k in range(args.folds)]
    with ThreadPoolExecutor(args.jobs) as pool:
        list(pool.map(lambda fr: train_fold(*fr, args.seed), zip(folds, runs)))
    scores = [fold_scores(run, fold, args.grid) for run, fold in zip(runs, folds)]
    summary = summarise(scores, BASES[args.grid])
    print(json.dumps(summary, indent=2))
    write_results(args.output, summary)


if __name__ == "__main__":
    main()
