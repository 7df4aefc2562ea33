"""Benchmark: decoding for quality: single runs, their ensemble, and re-ranking.

    .venv/bin/python bench/bench_decoding_quality.py --runs R1,R2,R3 \
        --data ../shared/data/flickr8k-mini [--splits val,test] \
        [--output bench/results/decoding_quality.json]

For each setting and split: CIDEr-D (pycocoevalcap's, through `evaluate_run` with Java for the
PTB tokenizer and METEOR), BLEU-4, METEOR, a 95% bootstrap interval of CIDEr-D over images
(captionkit's exact per-image CIDEr-D), and images/s (decoding and re-ranking from cached
features, this machine; feature extraction is not timed: it is a cache hit). Settings: each run
alone (beam 3), with each re-ranker, with diverse beams (the first run), the ensemble of all
runs (beam 3) and each re-ranker on the ensemble. Runs without a neighbour index get one
(`index_run`).

    --group-scores --runs R1,R2,R3 --output G.json     per-image scores of one group of runs
    --summarise-groups G1.json,G2.json,...             each group's ensemble against its best run

The second pair measures the ensemble's gain over several groups of seeds, since one group of
three is one noisy draw (BENCHMARKS.md "Ensembles").
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from common import (
    PLAIN,
    bootstrap,
    common_options,
    per_image_cider,
    split_scores,
    write_json,
    write_results,
)

from captionkit.data import load_dataset
from captionkit.decoding import DecodingOptions
from captionkit.evaluation.captioner import Captioner, load_members
from captionkit.evaluation.evaluate import caption_rows, evaluate_run, member_stores
from captionkit.evaluation.run_index import index_run
from captionkit.reranking import NeighbourIndex, RerankOptions, run_reranker

RERANKS = {
    "consensus": RerankOptions("consensus", candidates=5),
    "mbr": RerankOptions("mbr", candidates=5),
}


BEAM3 = DecodingOptions(beam_size=3)
DIVERSE = DecodingOptions(beam_size=3, beam_groups=3, diversity=0.5)


def score(runs, data: str, split: str, rerank: RerankOptions | None = None,
          options: DecodingOptions = BEAM3) -> dict:  # fmt: skip
    """Metrics, bootstrap interval and images/s of one setting on one split."""
    start = time.perf_counter()
    ev = evaluate_run(runs, data, split=split, options=options, rerank=rerank or PLAIN)
    seconds = time.perf_counter() - start
    per_image = per_image_cider(ev.predictions, ev.references)
    return {"CIDEr": ev.metrics["CIDEr"], "BLEU-4": ev.metrics["BLEU-4"],
            "METEOR": ev.metrics.get("METEOR"), "ci95": bootstrap(per_image),
            "img_per_s": len(ev.predictions) / seconds}  # fmt: skip


def speed(runs: list[str], data: str, rerank: RerankOptions | None, repeats: int = 3) -> dict:
    """Images/s of one setting on the test split, best of `repeats`: decoding (and re-ranking)
    from cached features alone, and from the image files through `Captioner` (reading, the
    encoder, decoding, re-ranking), batches of 32 images."""
    dataset = load_dataset(data)
    members = load_members(runs)
    stores, records = member_stores(dataset, members, None)
    records = [r for r in records if r.split == "test"]
    rows = [store.rows([dataset.path(r) for r in records]) for store in stores]
    reranker = run_reranker(members[0], rerank) if rerank is not None else None
    args = (members, stores, rows) if len(runs) > 1 else (members[0], stores[0], rows[0])
    decoding = _best_rate(lambda: caption_rows(*args, BEAM3, reranker=reranker), len(records),
                          repeats)  # fmt: skip
    captioner = Captioner.load(runs if len(runs) > 1 else runs[0])
    paths = [dataset.path(r) for r in records]
    images = _best_rate(lambda: captioner.caption(paths, BEAM3, rerank=rerank or PLAIN), len(paths),
                        repeats)  # fmt: skip
    return {"decoding_img_per_s": decoding, "from_images_img_per_s": images}


def _best_rate(work, items: int, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        best = min(best, time.perf_counter() - start)
    return items / best


def settings(runs: list[str]) -> dict:
    """Setting name -> (runs argument of `evaluate_run`, re-ranking, decoding options)."""
    out = {f"single {Path(r).name}": (r, None, BEAM3) for r in runs}
    out.update({f"single {Path(r).name} + {name}": (r, rr, BEAM3)
                for r in runs for name, rr in RERANKS.items()})  # fmt: skip
    out[f"single {Path(runs[0]).name}, diverse beams (3 groups, λ 0.5)"] = (runs[0], None, DIVERSE)
    out[f"ensemble of {len(runs)}"] = (runs, None, BEAM3)
    out.update({f"ensemble of {len(runs)} + {name}": (runs, rr, BEAM3)
                for name, rr in RERANKS.items()})  # fmt: skip
    return out


def group_scores(runs: list[str], data: str, splits: list[str]) -> dict:
    """Per-image CIDEr-D (beam 3) of each run alone and with consensus re-ranking, and of their
    ensemble plain and re-ranked: setting -> split -> image -> score (no Java needed)."""
    three = RerankOptions("consensus", candidates=3)  # the beam's own 3: no wider beam
    which = {f"single {Path(r).name}": (r, None) for r in runs}
    which |= {f"single {Path(r).name} + consensus": (r, RERANKS["consensus"]) for r in runs}
    which |= {f"single {Path(r).name} + consensus of 3": (r, three) for r in runs}
    which |= {"ensemble": (runs, None), "ensemble + consensus": (runs, RERANKS["consensus"])}
    which["ensemble + consensus of 3"] = (runs, three)
    return {name: {split: split_scores(members, data, split, rerank) for split in splits}
            for name, (members, rerank) in which.items()}  # fmt: skip


def summarise_groups(paths: list[str]) -> dict:
    """For each group of runs (a `--group-scores` file): the single run best on val, the
    ensemble and the ensemble with consensus on test, and the mean over groups of the gain with
    a bootstrap interval over images (each image's gain averaged over the groups)."""
    rows, gains = [], {"ensemble": [], "ensemble + consensus": [], "ensemble + consensus of 3": []}
    groups = {Path(path).stem: json.loads(Path(path).read_text()) for path in paths}
    for group, scores in groups.items():
        mean = {k: {s: float(np.mean(list(v.values()))) for s, v in d.items()} for k, d in
                scores.items()}  # fmt: skip
        singles = [k for k in scores if k.startswith("single") and "+" not in k]
        best = max(singles, key=lambda k: mean[k]["val"])
        row = {"group": group, "best single": best, "single val": mean[best]["val"],
               "single test": mean[best]["test"]}  # fmt: skip
        for name in [g for g in gains if g in scores]:
            row[f"{name} val"], row[f"{name} test"] = mean[name]["val"], mean[name]["test"]
            keys = sorted(scores[best]["test"])
            gains[name].append([scores[name]["test"][k] - scores[best]["test"][k] for k in keys])
        rows.append(row)
    summary = {name: {"mean gain": float(np.mean(g)), "ci95": bootstrap(np.mean(g, axis=0))}
               for name, g in gains.items() if len(g) == len(groups)}  # fmt: skip
    return {"groups": rows, "test gain over the best single": summary,
            "consensus gain on single runs": consensus_gains(list(groups.values()))}  # fmt: skip


def consensus_gains(groups: list[dict]) -> dict:
    """Consensus re-ranking (5 candidates) against beam 3 on every single run of the groups
    (`--group-scores` results): split -> mean gain, its bootstrap interval over images and how
    many runs it raised."""
    out = {}
    for split in ("val", "test"):
        diffs = []
        for scores in groups:
            for name in [k for k in scores if k.startswith("single") and "+" not in k]:
                plain, reranked = scores[name][split], scores[f"{name} + consensus"][split]
                diffs.append([reranked[k] - plain[k] for k in sorted(plain)])
        diffs = np.array(diffs)  # [runs, images]
        out[split] = {"runs": len(diffs), "mean gain": float(diffs.mean()),
                      "ci95": bootstrap(diffs.mean(axis=0)),
                      "runs raised": int((diffs.mean(axis=1) > 0).sum())}  # fmt: skip
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        parents=[common_options(output="decoding_quality.json")],
    )
    parser.add_argument("--runs", help="Comma-separated run folders.")
    parser.add_argument("--splits", default="val,test")
    parser.add_argument("--speed", metavar="RUN", help="Only images/s (see `speed`): RUN "
                        "alone, then the ensemble of --runs, plain and re-ranked.")  # fmt: skip
    parser.add_argument("--speed-candidates", default="", help="With --speed: also consensus "
                        "with these numbers of candidates, comma-separated.")  # fmt: skip
    parser.add_argument(
        "--group-scores",
        action="store_true",
        help="Only per-image scores "
        "of each run, with consensus, and of their ensemble (`group_scores`).",
    )
    parser.add_argument(
        "--summarise-groups",
        metavar="FILES",
        help="Comma-separated --group-scores outputs: each ensemble against its best single run.",
    )
    args = parser.parse_args()
    if not (args.runs or args.summarise_groups):
        parser.error("give --runs (or --summarise-groups)")
    if args.summarise_groups:
        summary = summarise_groups(args.summarise_groups.split(","))
        print(json.dumps(summary, indent=2))
        write_json(args.output, summary)  # of files measured elsewhere: no machine of its own
        return
    runs = args.runs.split(",")
    for run in runs:
        if not NeighbourIndex.exists(run):
            index_run(run, args.data)
    if args.group_scores:
        scores = group_scores(runs, args.data, args.splits.split(","))
        write_json(args.output, scores)  # read back by --summarise-groups: scores only
        return
    if args.speed:
        groups = [(f"single {Path(args.speed).name}", [args.speed])]
        groups += [(f"ensemble of {len(runs)}", runs)] if len(runs) > 1 else []
        settings = [("beam 3", None), *RERANKS.items()]
        settings += [(f"consensus, {n} candidates", RerankOptions("consensus", candidates=int(n)))
                     for n in args.speed_candidates.split(",") if n]  # fmt: skip
        results = {f"{name} + {rr_name}": speed(which, args.data, rr)
                   for name, which in groups for rr_name, rr in settings}  # fmt: skip
        for name, result in results.items():
            print(name, json.dumps(result), flush=True)
        write_results(args.output, results)
        return
    results = {}
    for name, (which, rerank, options) in settings(runs).items():
        results[name] = {s: score(which, args.data, s, rerank, options)
                         for s in args.splits.split(",")}  # fmt: skip
        print(name, json.dumps(results[name]), flush=True)
    write_results(args.output, results)


if __name__ == "__main__":
    main()
