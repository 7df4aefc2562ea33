"""Benchmark: caption quality of each training recipe (issue #15's ablation table).

    .venv/bin/python bench/bench_quality.py --data ../shared/data/flickr8k-mini --out runs/quality \
        [--variants attention-emb,updown,...] [--seeds 0,1,2] [--jobs N] [--table-only]

Every variant is a `captionkit train` command line (below); each (variant, seed) trains into
`OUT/VARIANT-sSEED` unless that run folder already holds a model (so a table can be rebuilt,
and more seeds added, without training again). Each run is then decoded on val and test with
beam 3, `<unk>` forbidden, and scored with our exact CIDEr-D per image (equal to pycocoevalcap's
mean, tested); the table gives the mean over seeds, a 95% bootstrap interval over images of the
seed-averaged per-image scores, and the training minutes (wall clock, this machine). Results go
to `--output` (JSON) and the markdown table is printed. `--jobs N` trains and scores N runs at a
time, each in its own process (on a GPU machine; training minutes then are not those of 2 cores);
every run's scores are kept in `RUN/bench_scores.json` as soon as it is done.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from bench_models import bootstrap, split_scores

# name -> (what it tests, `captionkit train` options). All read cached EfficientNet-Lite0 features
# unless they say otherwise; `--preset none` starts from the config defaults, so each line says
# all it changes. "best" is the default recipe (`captionkit train` with no option); the `best-*`
# rows of BENCHMARKS.md were measured when it trained at 5e-4, constant (now lr5e4-constant),
# with early stopping (patience 5) and the best epoch kept; the `lr*` rows with that selection
# too (BEST_EPOCH), before the default kept the mean of its last 5 epochs.
BEST_EPOCH = ["--patience", "5", "--average-last", "0"]
STEP = ["--schedule", "step", "--lr-gamma", "0.8", "--lr-step-epochs", "3", *BEST_EPOCH]
LR5E4 = ["--lr", "5e-4", "--schedule", "constant", *BEST_EPOCH]
STEP5E4 = [*STEP, "--lr", "5e-4"]
MODEL_ARG = ["--model-arg"]
VARIANTS: dict[str, tuple[str, list[str]]] = {
    "attention-old": (
        "Show-Attend-Tell as before #15: raw 1280-d grid, no input dropout, λ = 1 (sum), 15 ep",
        [
            "--preset",
            "none",
            "--model",
            "attention",
            "--epochs",
            "15",
            "--model-arg",
            "embed_features=false",
            "--model-arg",
            "word_dropout=0",
            "--model-arg",
            "alpha_c=1.0",
        ],
    ),  # fmt: skip
    "attention-emb": (
        "grid embedded to 512-d (Linear, ReLU, dropout 0.5), word ReLU+dropout, λ = 0.02, 20 ep",
        ["--preset", "none", "--model", "attention", "--epochs", "20", "--patience", "5"],
    ),
    "attention-emb-lite2": (
        "the same on EfficientNet-Lite2 features (9x9 grid)",
        [
            "--preset",
            "none",
            "--model",
            "attention",
            "--epochs",
            "20",
            "--patience",
            "5",
            "--encoder",
            "tf_efficientnet_lite2",
        ],
    ),  # fmt: skip
    "updown": (
        "top-down attention decoder (two LSTMs), embedded features, no regulariser, 20 ep",
        ["--preset", "none", "--model", "updown", "--epochs", "20", "--patience", "5"],
    ),
    "best": (
        "default: attention-emb, Adam 2e-3 x 0.8 every 3 ep, 30 ep, mean of the last 5 epochs",
        [],
    ),
    "best-views4": (
        "default + features of 4 augmented views of each training image (crop, flip), one a epoch",
        ["--feature-views", "4"],
    ),
    "best-views8": ("default + 8 augmented views", ["--feature-views", "8"]),
    "best-ema": ("default + EMA of the weights (decay 0.99)", ["--ema", "0.99"]),
    "best-ls": ("default + label smoothing 0.1", ["--label-smoothing", "0.1"]),
    "best-scst": ("default + 5 SCST epochs, kept if better on val", ["--scst-epochs", "5"]),
    "best-views4-ema": ("4 views + EMA 0.99", ["--feature-views", "4", "--ema", "0.99"]),
    "best-views4-scst": ("4 views + 5 SCST epochs", ["--feature-views", "4", "--scst-epochs", "5"]),
    "best-views4-ls": (
        "4 views + label smoothing 0.1",
        ["--feature-views", "4", "--label-smoothing", "0.1"],
    ),  # fmt: skip
    "best-grouped": (
        "default with batches of whole images (`--group-images`: 5 captions an image, the grid "
        "embedded once per image)",
        ["--group-images"],
    ),
    "best-updown": ("default recipe with the top-down decoder", ["--model", "updown"]),
    "best-updown-views4": (
        "top-down decoder + 4 views",
        ["--model", "updown", "--feature-views", "4"],
    ),
    # The learning-rate sweep (issue 15, later session): each names its rate and schedule, since
    # "best" changed with it (it was lr5e4-constant, it is now lr2e3-step).
    "lr5e4-constant": ("the earlier default: Adam at 5e-4, constant", LR5E4),
    "lr5e4-step": ("5e-4, x 0.8 every 3 epochs (the reference implementation's decay)", STEP5E4),
    "lr1e3-step": ("1e-3, x 0.8 every 3 epochs", [*STEP, "--lr", "1e-3"]),
    "lr2e3-step": ("2e-3, x 0.8 every 3 epochs (the default's rate)", [*STEP, "--lr", "2e-3"]),
    "lr3e3-step": ("3e-3, x 0.8 every 3 epochs", [*STEP, "--lr", "3e-3"]),
    "lr5e4-cosine": ("5e-4, cosine decay", ["--lr", "5e-4", "--schedule", "cosine", *BEST_EPOCH]),
    "lr1e3-cosine": ("1e-3, cosine decay", ["--lr", "1e-3", "--schedule", "cosine", *BEST_EPOCH]),
    "lr5e4-plateau": (
        "5e-4, halved when val CIDEr stalls for 2 epochs",
        ["--lr", "5e-4", "--schedule", "plateau", *BEST_EPOCH],
    ),
    "lr1e3-plateau": (
        "1e-3, halved when val CIDEr stalls for 2 epochs",
        ["--lr", "1e-3", "--schedule", "plateau", *BEST_EPOCH],
    ),
    "lr5e4-mc3": (
        "5e-4 constant, words seen 3 times in the vocabulary (not 5)",
        [*LR5E4, "--min-count", "3"],
    ),
    "lr5e4-adamw": (
        "5e-4 constant, AdamW with weight decay 0.01",
        [*LR5E4, "--optimizer", "adamw", "--weight-decay", "0.01"],
    ),
    "lr1e3-step-adamw": (
        "1e-3 x 0.8 every 3 epochs, AdamW with weight decay 0.01",
        [*STEP, "--lr", "1e-3", "--optimizer", "adamw", "--weight-decay", "0.01"],
    ),
    "lr1e3-step-mc3": (
        "1e-3 x 0.8 every 3 epochs, words seen 3 times",
        [*STEP, "--lr", "1e-3", "--min-count", "3"],
    ),
    # Levers measured again on top of the averaged default (session 9): each adds to it.
    "avg-views8": ("default + 8 augmented views of each training image", ["--feature-views", "8"]),
    "avg-ls": ("default + label smoothing 0.1", ["--label-smoothing", "0.1"]),
    # Cheaper members for an ensemble default (session 10): bf16 autocast, a shorter schedule.
    "bf16": ("default trained under bf16 autocast", ["--precision", "bf16-mixed"]),
    "bf16-e20": (
        "bf16 autocast, 20 epochs, x 0.8 every 2 epochs (the same final rate)",
        ["--precision", "bf16-mixed", "--epochs", "20", "--lr-step-epochs", "2"],
    ),
    "best-lite2": (
        "default on EfficientNet-Lite2 features (packaged weights, 260 px, 9x9 grid)",
        ["--encoder", "tf_efficientnet_lite2"],
    ),
    "avg-ss": (
        "default + scheduled sampling, rising from epoch 5 over 15 epochs to 0.25",
        ["--scheduled-sampling", "0.25", "--ss-start-epoch", "5", "--ss-ramp-epochs", "15"],
    ),
    "squash": (
        "default on features of the whole photo, squashed to 224 x 224 (not its centre crop)",
        ["--resize", "squash"],
    ),
    "avg-drop3": (
        "default with dropout 0.3 (not 0.5) on the features, the words and the LSTM output",
        ["--dropout", "0.3", *MODEL_ARG, "feature_dropout=0.3", *MODEL_ARG, "word_dropout=0.3"],
    ),
    "avg-cw": (
        "default with each caption's cross-entropy weighted by its consensus (its CIDEr-D against"
        " the image's other captions)",
        ["--caption-weights", "consensus"],
    ),
    "avg-nounk": (
        "default with `<unk>` targets left out of the cross-entropy",
        ["--no-unk-targets"],
    ),
    "avg-wdrop3": (
        "default with DropConnect 0.3 on the LSTM's hidden-to-hidden weights (AWD-LSTM)",
        [*MODEL_ARG, "weight_drop=0.3"],
    ),
    "avg-clipv": (
        "default with each gradient value clamped to 0.1 (the reference implementation's clipping)"
        " instead of the norm clipped to 5",
        ["--grad-clip-algorithm", "value", "--grad-clip", "0.1"],
    ),
    "avg-b32": (
        "default with batches of 32 captions instead of 64 (twice the optimizer steps)",
        ["--batch-size", "32"],
    ),
    "avg-alpha0": (
        "default without the doubly stochastic regulariser (alpha_c 0)",
        [*MODEL_ARG, "alpha_c=0"],
    ),
    "avg-updown": (
        "the top-down decoder trained as the default (its rate, decay and weight averaging)",
        [
            "--model",
            "updown",
            "--lr",
            "2e-3",
            "--schedule",
            "step",
            "--lr-gamma",
            "0.8",
            "--lr-step-epochs",
            "3",
            "--average-last",
            "5",
        ],  # fmt: skip
    ),
    # Session 13: the one unmeasured encoder, and a vocabulary with no `<unk>` at all.
    "avg-lite1": (
        "default on EfficientNet-Lite1 features (packaged weights, 240 px, 8x8 grid)",
        ["--encoder", "tf_efficientnet_lite1"],
    ),
    "avg-bpe": (
        "default with BPE pieces (1,000 tokens, captions cut at 24) instead of words seen 5 times",
        ["--tokenizer", "bpe", "--vocab-size", "1000", "--max-length", "24"],
    ),
    "best-config": (
        "the same recipe as a config file (configs/flickr8k-mini/best.yaml)",
        ["--config", "configs/flickr8k-mini/best.yaml"],
    ),
}


def train_run(name: str, seed: int, args) -> Path:
    """Train one (variant, seed) unless its run folder already has a model; its wall time is kept
    in `bench_time.json` beside it."""
    run_dir = Path(args.out) / f"{name}-s{seed}"
    if (run_dir / "model.safetensors").exists():
        return run_dir
    argv = ["train", "--data", args.data, "--out", str(run_dir), "--seed", str(seed),
            *VARIANTS[name][1]]  # fmt: skip
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "captionkit", *argv], check=True)
    minutes = (time.perf_counter() - start) / 60
    (run_dir / "bench_time.json").write_text(json.dumps({"minutes": minutes, "argv": argv}))
    return run_dir


def run_scores(run_dir: Path, data: str) -> dict[str, dict[str, float]]:
    """Per-image val and test CIDEr-D of a run, computed once and kept in `bench_scores.json`."""
    path = run_dir / "bench_scores.json"
    if not path.exists():
        scores = {split: split_scores(run_dir, data, split) for split in ("val", "test")}
        path.write_text(json.dumps(scores))
    return json.loads(path.read_text())


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
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data/flickr8k-mini")
    parser.add_argument("--out", default="runs/quality")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--output", default="bench/results_quality.json")
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
        results = from_collected(json.loads(Path(args.from_collected).read_text()), args.base)
        Path(args.output).write_text(json.dumps(results, indent=2))
        print(table(results, args.base))
        return
    seeds = [int(s) for s in args.seeds.split(",")]
    names = args.variants.split(",")
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
    Path(args.output).write_text(json.dumps(results, indent=2))
    if args.collect:
        Path(args.collect).write_text(json.dumps(collect(Path(args.out))))
    print(table(results))


if __name__ == "__main__":
    main()
