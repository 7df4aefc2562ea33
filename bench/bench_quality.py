"""Benchmark: caption quality of each training recipe (the default and its variants).

    .venv/bin/python bench/bench_quality.py --data ../shared/data/flickr8k-mini --out runs/quality \
        [--variants attention-emb,updown,...] [--seeds 0,1,2] [--jobs N] [--table-only]

Every variant is a `captionkit train` command line (bench/variants/quality.yaml); each (variant,
seed) trains into `OUT/VARIANT-sSEED` unless that run folder already holds a model (so a table can
be rebuilt, and more seeds added, without training again). Each run is then decoded on val and test
with beam 3, `<unk>` forbidden, and scored with our exact CIDEr-D per image (equal to
pycocoevalcap's mean, tested); the table gives the mean over seeds, a 95% bootstrap interval over
images of the seed-averaged per-image scores, and the training minutes (wall clock, this machine).
Results go to `--output` (JSON) and the markdown table is printed. `--jobs N` trains and scores N
runs at a time, each in its own process (on a GPU machine; training minutes then are not those of 2
cores); every run's scores are kept in `RUN/bench_scores.json` as soon as it is done.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from common import (
    bootstrap,
    common_options,
    load_variants,
    run_scores,
    train_variant,
    write_json,
    write_results,
)

VARIANTS = load_variants("quality")
"""variant -> (what it changes, its `captionkit train` options): bench/variants/quality.yaml."""


def train_run(name: str, seed: int, args) -> Path:
    """Train one (variant, seed) unless its run folder already has a model (`train_variant`)."""
    return train_variant(VARIANTS, name, seed, args.data, args.out)


def train_and_score(name: str, seed: int, args) -> Path:
    """One run trained and scored, the scoring in a process of its own (see `--jobs`)."""
    run_dir = train_run(name, seed, args)
    if not (run_dir / "bench_scores.json").exists():
        subprocess.run([sys.executable, __file__, "--data", args.data, "--score-run",
                        str(run_dir)], check=True)  # fmt: skip
    scores = json.loads((run_dir / "bench_scores.json").read_text())
    means = {s: round(float(np.mean(list(v.values()))), 4) for s, v in scores.items()}
    print(f"done {run_dir.name}: {means}", flush=True)
    return run_dir


def summarise(runs: list[Path], data: str) -> dict:
    """`summarise_scores` of run folders (scored here if they are not yet)."""
    times = [json.loads((r / "bench_time.json").read_text())["minutes"] for r in runs
             if (r / "bench_time.json").exists()]  # fmt: skip
    return summarise_scores([run_scores(r, data) for r in runs], times)


def summarise_scores(per_run: list[dict], minutes: list[float]) -> dict:
    """Mean over seeds, bootstrap interval (over images, of the seed-averaged per-image scores)
    and per-seed means of each split, and the mean training minutes."""
    out: dict = {"seeds": len(per_run)}
    for split in ("val", "test"):
        keys = sorted(per_run[0][split])
        matrix = np.array([[p[split][k] for k in keys] for p in per_run])  # [seeds, images]
        out[split] = {"mean": float(matrix.mean()), "ci95": bootstrap(matrix.mean(axis=0)),
                      "per_seed": matrix.mean(axis=1).tolist()}  # fmt: skip
    out["train_minutes"] = float(np.mean(minutes)) if minutes else None
    return out


def paired_difference(runs: dict[int, dict], base: dict[int, dict], split: str) -> dict:
    """Mean difference of two variants on the seeds both have (per image, seed-averaged), with
    its paired bootstrap interval."""
    seeds = sorted(set(runs) & set(base))
    keys = sorted(runs[seeds[0]][split])
    diff = np.array([[runs[s][split][k] - base[s][split][k] for k in keys] for s in seeds])
    return {"seeds": seeds, "mean": float(diff.mean()), "ci95": bootstrap(diff.mean(axis=0))}


def collect(out: Path) -> dict:
    """Every finished run of `out` (trained to its end, scored): name -> scores and minutes, for
    `--from-collected` on another machine."""
    runs = {}
    for run in sorted(out.iterdir()):
        done = run / "bench_time.json"
        if done.exists() and (run / "bench_scores.json").exists():
            runs[run.name] = {"scores": json.loads((run / "bench_scores.json").read_text()),
                              "minutes": json.loads(done.read_text())["minutes"]}  # fmt: skip
    return runs


def from_collected(runs: dict, base: str = "best") -> dict:
    """The results of `collect`'s runs, grouped by variant, each with its paired difference to
    `base` (when both have common seeds)."""
    grouped: dict[str, dict[int, dict]] = {}
    for name, run in runs.items():
        variant, seed = name.rsplit("-s", 1)
        grouped.setdefault(variant, {})[int(seed)] = run
    results = {}
    for variant, seeds in sorted(grouped.items(), key=lambda kv: (kv[0] != base, kv[0])):
        ordered = [seeds[s] for s in sorted(seeds)]
        r = summarise_scores([x["scores"] for x in ordered], [x["minutes"] for x in ordered])
        if variant != base and base in grouped and set(seeds) & set(grouped[base]):
            scores = {s: x["scores"] for s, x in seeds.items()}
            base_scores = {s: x["scores"] for s, x in grouped[base].items()}
            r["vs_" + base] = {split: paired_difference(scores, base_scores, split)
                               for split in ("val", "test")}  # fmt: skip
        results[variant] = r
    return results


def table(results: dict, base: str = "best") -> str:
    lines = ["| variant | what | seeds | val CIDEr (95% CI) | test CIDEr (95% CI) "
             f"| Δ val, Δ test vs {base} (paired, 95% CI) | train min |",
             "| --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    for name, r in results.items():
        cells = [f"{r[s]['mean']:.3f} ({r[s]['ci95'][0]:.3f}–{r[s]['ci95'][1]:.3f})"
                 for s in ("val", "test")]  # fmt: skip
        minutes = "" if r["train_minutes"] is None else f"{r['train_minutes']:.1f}"
        paired = r.get("vs_" + base)
        delta = "" if paired is None else ", ".join(
            f"{paired[s]['mean']:+.3f} ({paired[s]['ci95'][0]:+.3f}…{paired[s]['ci95'][1]:+.3f})"
            for s in ("val", "test"))  # fmt: skip
        lines.append(f"| {name} | {VARIANTS[name][0]} | {r['seeds']} | {cells[0]} | {cells[1]} "
                     f"| {delta} | {minutes} |")  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], parents=[common_options(output="quality.json")]
    )
    parser.add_argument("--out", default="runs/quality")
    parser.add_argument("--variants", default=",".join(VARIANTS),
                        help="Comma-separated names of bench/variants/quality.yaml.")  # fmt: skip
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--table-only", action="store_true",
                        help="Score the run folders already in --out; train nothing.")  # fmt: skip
    parser.add_argument("--jobs", type=int, default=1, help="Runs trained at a time.")
    parser.add_argument("--score-run", help=argparse.SUPPRESS)  # a worker of --jobs
    parser.add_argument("--collect", help="Also write every finished run's scores to this JSON.")
    parser.add_argument("--from-collected", help="Print the table of a --collect file (e.g. "
                        "made on a GPU machine); train nothing.")  # fmt: skip
    parser.add_argument("--base", default="best", help="The variant others are compared with.")
    args = parser.parse_args()
    if args.score_run:
        run_scores(Path(args.score_run), args.data)
        return
    if args.from_collected:
        # The runs were measured elsewhere (their machine is not this one): the table as it is.
        results = from_collected(json.loads(Path(args.from_collected).read_text()), args.base)
        write_json(args.output, results)
        print(table(results, args.base))
        return
    seeds = [int(s) for s in args.seeds.split(",")]
    names = args.variants.split(",")
    if unknown := [name for name in names if name not in VARIANTS]:
        parser.error(f"unknown variants {unknown} (see bench/variants/quality.yaml)")
    if not args.table_only:
        with ThreadPoolExecutor(args.jobs) as pool:
            list(pool.map(lambda ns: train_and_score(*ns, args),
                          [(n, s) for s in seeds for n in names]))  # fmt: skip
    results = {}
    for name in names:
        runs = [Path(args.out) / f"{name}-s{s}" for s in seeds]
        runs = [r for r in runs if (r / "model.safetensors").exists()]
        if runs:
            results[name] = summarise(runs, args.data)
    write_results(args.output, results)
    if args.collect:
        write_json(args.collect, collect(Path(args.out)))
    print(table(results))


if __name__ == "__main__":
    main()
