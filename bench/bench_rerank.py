"""Benchmark: re-ranking (consensus, MBR) against plain beam search on one run and split.

    .venv/bin/python bench/bench_rerank.py --run runs/att --data ../shared/data/flickr8k-mini \
        --split val [--output bench/results/rerank.json] [--index]

`--index` builds the run's neighbour index first if it has none.

For each setting: CIDEr-D (captionkit's exact CIDEr-D, pycocoevalcap's numbers on the Python PTB
tokenizer's words, document frequencies of the split's references: no Java) and images/s on
this machine (decoding + re-ranking, from cached features, batches of 64; the encoder is not
timed). The candidates of each `--candidates N` (beam N, its N best) are decoded once and
re-ranked by every setting, so each setting's images/s adds its own re-ranking time to that
decoding time. `--knn` also times the exact k-NN alone on a random COCO-sized index (113k x
1280): whether one matrix product is fast enough at that size.
"""

from __future__ import annotations

import argparse
import itertools
import time
from pathlib import Path

import numpy as np
import torch
from common import RESULTS, write_results

from captionkit.data import load_dataset, tokenize
from captionkit.decoding import DecodingOptions, decode
from captionkit.encoders.features import features_for_dataset
from captionkit.evaluation.captioner import run_options
from captionkit.evaluation.evaluate import pin_splits
from captionkit.evaluation.run_index import index_run
from captionkit.metrics.cider_d import CiderD
from captionkit.models.run_folder import encoder_for, load_checkpoint
from captionkit.reranking import NeighbourIndex, RerankOptions, run_reranker

BATCH = 64


def decode_all(trained, store, rows: list[int], options: DecodingOptions):
    """[(pooled [B, D], results per image)] per batch, and the seconds it took."""
    options = run_options(trained, options)
    batches, start = [], time.perf_counter()
    for i in range(0, len(rows), BATCH):
        batch = rows[i : i + BATCH]
        pooled = torch.from_numpy(np.asarray(store.pooled[batch], dtype=np.float32))
        grid = None
        if trained.model.uses_grid:
            grid = torch.from_numpy(np.asarray(store.grid[batch], dtype=np.float32))
        with torch.inference_mode():
            batches.append((pooled, decode(trained.model, pooled, grid, options)))
    return batches, time.perf_counter() - start


def reranked(trained, batches, reranker) -> tuple[list[str], float]:
    """The chosen caption of every image, and the seconds re-ranking took."""
    text = lambda h: trained.vocab.decode(h.tokens)  # noqa: E731
    captions, start = [], time.perf_counter()
    for pooled, results in batches:
        if reranker is not None:
            results = reranker.rerank(results, text, pooled)
        captions += [text(hyps[0]) for hyps in results]
    return captions, time.perf_counter() - start


def show(row: dict) -> None:
    print(f"{row['setting']:<52} CIDEr {row['CIDEr']:.4f}  {row['images_per_s']:7.1f} img/s")


def settings(args) -> list[RerankOptions]:
    out = []
    for n, w in itertools.product(args.candidates, args.weights):
        out += [RerankOptions("consensus", n, w, k) for k in args.k]
        out.append(RerankOptions("mbr", n, w))
    return out


def knn_timing(dim: int = 1280, images: int = 113_000, queries: int = 64) -> dict:
    """Seconds of one batch of exact k-NN queries on a random index of COCO's size."""
    rng = np.random.default_rng(0)
    features = torch.from_numpy(rng.standard_normal((images, dim), dtype=np.float32))
    index = NeighbourIndex(torch.nn.functional.normalize(features, dim=1), [""] * images, [])
    q = rng.standard_normal((queries, dim), dtype=np.float32)
    index.nearest(q, 60)  # warm-up
    start = time.perf_counter()
    index.nearest(q, 60)
    seconds = time.perf_counter() - start
    return {"index_images": images, "dim": dim, "queries": queries, "seconds": seconds,
            "ms_per_image": 1000 * seconds / queries}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", required=True, type=Path)
    parser.add_argument("--data", required=True, type=Path)
    parser.add_argument("--images", type=Path)
    parser.add_argument("--split", default="val")
    parser.add_argument("--cache-dir")
    parser.add_argument("--limit", type=int, help="Only the first N images of the split.")
    parser.add_argument("--candidates", type=int, nargs="+", default=[5, 10])
    parser.add_argument("--weights", type=float, nargs="+", default=[0.0, 0.3, 0.6])
    parser.add_argument("--k", type=int, nargs="+", default=[15, 60])
    parser.add_argument("--index", action="store_true", help="Build a missing neighbour index.")
    parser.add_argument("--knn", action="store_true", help="Also time k-NN on a COCO-sized index.")
    parser.add_argument("--output", type=Path, default=RESULTS / "rerank.json")
    args = parser.parse_args()

    if args.index and not NeighbourIndex.exists(args.run):
        print(f"indexing {args.run} from the train split of {args.data}")
        index_run(args.run, args.data, args.images, args.cache_dir)
    trained = load_checkpoint(args.run)
    dataset = load_dataset(args.data, args.images)
    pin_splits(dataset, args.data, args.run, trained)
    store, records = features_for_dataset(dataset, encoder_for(trained), args.cache_dir)
    records = [r for r in records if r.split == args.split][: args.limit]
    rows = store.rows([dataset.path(r) for r in records])
    refs = {r.filename: [" ".join(tokenize(c)) for c in r.captions] for r in records}
    cider = CiderD(refs)

    def score(captions: list[str]) -> float:
        preds = {r.filename: " ".join(tokenize(c)) or "<empty>" for r, c in zip(records, captions)}
        return cider.corpus_score(preds)[0]

    results = []
    base, seconds = decode_all(trained, store, rows, DecodingOptions(beam_size=3))
    captions, _ = reranked(trained, base, None)
    results.append({"setting": "beam 3", "CIDEr": score(captions),
                    "images_per_s": len(rows) / seconds})  # fmt: skip
    show(results[-1])
    decoded = {n: decode_all(trained, store, rows, DecodingOptions(beam_size=n, n_best=n))
               for n in args.candidates}  # fmt: skip
    reranker = None
    for options in settings(args):
        reranker = run_reranker(trained, options, reranker)
        batches, decode_s = decoded[options.candidates]
        captions, rerank_s = reranked(trained, batches, reranker)
        row = {"setting": options.describe(), "method": options.method, "k": options.k,
               "candidates": options.candidates, "weight": options.weight,
               "CIDEr": score(captions), "images_per_s": len(rows) / (decode_s + rerank_s),
               "rerank_s": rerank_s, "decode_s": decode_s}  # fmt: skip
        results.append(row)
        show(row)
    out = {"run": str(args.run), "data": str(args.data), "split": args.split,
           "images": len(rows), "results": results}  # fmt: skip
    if args.knn:
        out["knn"] = knn_timing()
        print(f"k-NN, COCO-sized index: {out['knn']['ms_per_image']:.2f} ms per image")
    write_results(args.output, out)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
