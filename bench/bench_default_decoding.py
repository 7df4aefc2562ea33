"""Benchmark: the default decoding against the beam's own best, on runs of the default recipe.

    .venv/bin/python bench/bench_default_decoding.py --data ../shared/data/flickr8k-mini \
        --runs runs/quality/best-s0,runs/quality/best-s1,runs/quality/best-s2 \
        --output bench/results/default_decoding.json

The default of `evaluate`, `caption` and `serve` is beam 3 with `--rerank auto`: consensus
re-ranking of the beam's best (`RerankOptions().candidates`: 8; 5 before the re-ranker sweep, which
default_decoding_7seeds.json used) for a run with a neighbour index. Per run and split (val, test),
every image's CIDEr-D (captionkit's exact CIDEr-D; its mean is pycocoevalcap's) through
`evaluate_run` with its defaults and with `RerankOptions("none")`, and the seconds of each call;
then per setting the mean over the runs with a 95% bootstrap interval over images (of the
run-averaged scores), and the paired difference. `--also` adds the per-image scores of runs
measured earlier (an earlier --output), so seeds trained on different days pool without their run
folders. `--against` compares, seed by seed, with the runs of the same names in an earlier
--output (the same recipe from an earlier tree, say): per setting and split, the paired difference
over the shared runs' images.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from common import PLAIN, bootstrap, common_options, split_scores, write_results

from captionkit.reranking import RerankOptions

SETTINGS = {"beam 3 + auto (the default)": RerankOptions(), "beam 3, --rerank none": PLAIN}
"""The two decodings compared (their names are the results file's keys)."""
SPLITS = ("val", "test")


def run_scores(run: str, data: str, settings: dict = SETTINGS) -> dict:
    """setting -> split -> {"images": image -> CIDEr-D, "seconds": evaluate_run's wall time}."""
    out: dict = {}
    for name, rerank in settings.items():
        out[name] = {}
        for split in SPLITS:
            start = time.perf_counter()
            images = split_scores(run, data, split, rerank)
            out[name][split] = {"images": images, "seconds": time.perf_counter() - start}
    return out


def scores_matrix(runs: list[dict]) -> np.ndarray:
    """[runs, images]: each run's per-image scores (dicts keyed by image), in one image order."""
    keys = sorted(runs[0])
    return np.array([[r[k] for k in keys] for r in runs])


def paired(diff: np.ndarray) -> dict:
    """A paired difference [runs, images]: its mean, 95% interval over images, runs raised."""
    return {
        "mean": float(diff.mean()),
        "ci95": bootstrap(diff.mean(axis=0)),
        "runs_raised": int((diff.mean(axis=1) > 0).sum()),
    }


def summary(per_run: dict[str, dict]) -> dict:
    """Per setting and split: the mean over runs, its interval, each run's mean; and the paired
    difference of the default from the plain beam."""
    out: dict = {}
    default, plain = SETTINGS
    for split in SPLITS:
        matrix = {}
        for name in SETTINGS:
            matrix[name] = scores_matrix([s[name][split]["images"] for s in per_run.values()])
            out.setdefault(name, {})[split] = {
                "mean": float(matrix[name].mean()),
                "ci95": bootstrap(matrix[name].mean(axis=0)),
                "per_run": dict(zip(per_run, matrix[name].mean(axis=1).tolist())),
            }
        out.setdefault("difference", {})[split] = paired(matrix[default] - matrix[plain])
    return out


def against(per_run: dict, earlier: dict) -> dict:
    """Per setting and split: these runs minus the earlier runs of the same names, paired per
    image (the mean over the shared runs, its interval, and how many runs rose)."""
    shared = sorted(set(per_run) & set(earlier))
    if not shared:
        raise SystemExit("--against: no run names in common")
    out: dict = {"runs": shared}
    for name in SETTINGS:
        for split in SPLITS:
            new = scores_matrix([per_run[r][name][split]["images"] for r in shared])
            old = scores_matrix([earlier[r][name][split]["images"] for r in shared])
            out.setdefault(name, {})[split] = paired(new - old)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        parents=[common_options(output="default_decoding.json")],
    )
    parser.add_argument("--runs", required=True, help="Run folders, comma-separated.")
    parser.add_argument("--also", type=Path, help="An earlier --output whose runs join these.")
    parser.add_argument(
        "--against",
        type=Path,
        help="An earlier --output to compare with, run by run (runs of the same names).",
    )
    parser.add_argument("--candidates", type=int, default=RerankOptions().candidates,
                        help="Candidates the default decoding re-ranks (default: the package's "
                        "default; 5 remakes the files measured before it was 8).")  # fmt: skip
    args = parser.parse_args()
    settings = {
        **SETTINGS,
        "beam 3 + auto (the default)": RerankOptions(candidates=args.candidates),
    }
    runs = args.runs.split(",")
    earlier = json.loads(args.also.read_text()) if args.also else {"runs": [], "per_run": {}}
    clash = set(earlier["per_run"]) & {Path(r).name for r in runs}
    if clash:
        parser.error(f"{args.also} already has runs named {sorted(clash)}")
    per_run = {
        **earlier["per_run"],
        **{Path(r).name: run_scores(r, args.data, settings) for r in runs},
    }
    result = {"runs": earlier["runs"] + runs, "candidates": args.candidates,
              "summary": summary(per_run), "per_run": per_run}  # fmt: skip
    if args.against:
        result["against"] = {
            "file": str(args.against),
            **against(per_run, json.loads(args.against.read_text())["per_run"]),
        }
    write_results(args.output, result)
    print(json.dumps({k: result[k] for k in ("summary", "against") if k in result}, indent=1))


if __name__ == "__main__":
    main()
