"""Benchmark: our CIDEr-D (captionkit.metrics.cider_d) against pycocoevalcap's Cider, one run.

    .venv/bin/python bench/bench_cider.py --data ../shared/data/flickr8k-mini \
        [--distinct] [--output bench/results/cider.json]

5,000 captions are scored against the references of the dataset's images (image i % N for
caption i, as SCST scores several samples per image; pycocoevalcap needs one key per caption).
Each caption is a reference of another image, so scores are realistic and mostly low. Both get
the same PTB-style word tokens. Reported: CPU seconds of pycocoevalcap (one run) and ours (best
of --repeat), their ratio, the largest difference per caption, and ours with precomputed
document frequencies scoring only (SCST's per-batch cost). `--distinct` gives every caption
its own image instead (5 synthetic references each): nothing is shared, the harder case.
"""

from __future__ import annotations

import argparse
import json
import random
import time

import numpy as np
from common import common_options, write_results
from pycocoevalcap.cider.cider import Cider

from captionkit.data import load_dataset, tokenize
from captionkit.metrics.cider_d import CiderD


def flickr_pairs(data: str, count: int) -> tuple[dict, dict]:
    """(references, predictions) keyed 0..count-1 over the dataset's images."""
    refs = [[" ".join(tokenize(c)) for c in r.captions] for r in load_dataset(data).records]
    n = len(refs)
    gts = {k: refs[k % n] for k in range(count)}
    res = {k: refs[(k * 7 + 3) % n][k % len(refs[(k * 7 + 3) % n])] for k in range(count)}
    return gts, res


def distinct_pairs(data: str, count: int, seed: int = 0) -> tuple[dict, dict]:
    """Every caption its own image, with 5 references made by splicing two dataset captions."""
    words = [" ".join(tokenize(c)).split() for r in load_dataset(data).records for c in r.captions]
    rng = random.Random(seed)

    def caption() -> str:
        a, b = rng.sample(words, 2)
        return " ".join(a[: rng.randint(1, len(a))] + b[rng.randint(0, len(b) - 1) :])

    return {k: [caption() for _ in range(5)] for k in range(count)}, {
        k: caption() for k in range(count)
    }


def cpu_seconds(fn, repeat: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeat):
        start = time.process_time()
        out = fn()
        best = min(best, time.process_time() - start)
    return best, out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], parents=[common_options(output="cider.json")]
    )
    parser.add_argument("--captions", type=int, default=5000)
    parser.add_argument("--repeat", type=int, default=5, help="runs of ours (best is kept)")
    parser.add_argument("--distinct", action="store_true", help="one image per caption")
    args = parser.parse_args()
    gts, res = (distinct_pairs if args.distinct else flickr_pairs)(args.data, args.captions)
    keys = list(res)
    theirs, (mean, expected) = cpu_seconds(
        lambda: Cider().compute_score(gts, {k: [v] for k, v in res.items()}), 1
    )
    ours, scores = cpu_seconds(lambda: CiderD(gts).score([res[k] for k in keys], keys), args.repeat)
    cider = CiderD(gts)
    scoring, _ = cpu_seconds(lambda: cider.score([res[k] for k in keys], keys), args.repeat)
    out = {
        "captions": len(res),
        "images": len({tuple(v) for v in gts.values()}),
        "pycocoevalcap_s": round(theirs, 4),
        "ours_s": round(ours, 4),
        "speedup": round(theirs / ours, 1),
        "ours_scoring_only_s": round(scoring, 4),
        "max_abs_difference": float(np.abs(scores - expected).max()),
        "mean_cider": mean,
        "layout": "distinct" if args.distinct else "shared",
    }
    write_results(args.output, out)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
