"""Benchmark: decoding speed of trained runs, from cached features of the test split.

    .venv/bin/python bench/bench_decoding.py --data ../shared/data/flickr8k-mini \
        --runs runs/models/show_tell runs/models/attention runs/models/transformer

Per run, every figure through the same code (`caption_rows`, batches of images -> captions):
- images/s of greedy, beam 3 and beam 5 at batch 64 and at batch 1 (one image at a time), and the
  speedup of batching (batch 64 over batch 1);
- per-image latency at batch 1: median and p90 over the test images (and repeats);
- Transformers only: incremental decoding (the model's `step`, which caches every layer's keys and
  values) against recomputing the whole prefix at every step (`RecomputePrefix`: teacher-forcing
  `forward` on `<bos> w1 .. wt`, memory projection included, as a decoder without a cache does),
  greedy and beam 3 at batch 64 and batch 1; the two must give identical captions.

Throughputs are the median of `--repeats` passes after a warm-up pass. Runs are not trained here:
`bench_models.py` trains them (`--out runs/models`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from common import common_options, set_threads, throughput, write_results
from torch import nn

from captionkit.data import load_dataset
from captionkit.decoding import DecodingOptions
from captionkit.encoders.features import features_for_dataset
from captionkit.evaluation.evaluate import caption_rows
from captionkit.models.run_folder import TrainedModel, encoder_for, load_checkpoint
from captionkit.models.step import StepModel, StepOutput

STRATEGIES = {"greedy": 1, "beam3": 3, "beam5": 5}
BATCH = 64


class RecomputePrefix(StepModel, nn.Module):
    """A Transformer decoder without its cache: every `step` runs the teacher-forcing `forward`
    on the whole prefix and keeps the last position's logits, O(t^2) work for a caption of t
    tokens where the cached `step` does O(t)."""

    uses_grid = True
    attends = False

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def init_state(self, pooled: torch.Tensor, grid: torch.Tensor | None) -> dict:
        """Batch-first, like every model's state: decoders expand and reorder it on dim 0."""
        prefix = torch.zeros(pooled.shape[0], 0, dtype=torch.long, device=pooled.device)  # [B, 0]
        state = {"pooled": pooled, "prefix": prefix}
        return state if grid is None else {**state, "grid": grid}

    def step(self, tokens: torch.Tensor, state: dict) -> StepOutput:
        """tokens [B] -> logits [B, V] of the next position, state with the longer prefix."""
        prefix = torch.cat([state["prefix"], tokens[:, None]], dim=1)  # [B, t+1]
        logits = self.model(state["pooled"], state.get("grid"), prefix)[:, -1]  # [B, V]
        return StepOutput(logits, {**state, "prefix": prefix})


def batch1_latencies(trained: TrainedModel, store, rows: list[int], beam: int) -> list[float]:
    """Seconds to caption each image alone, through the same code as the batched passes."""
    options, seconds = DecodingOptions(beam_size=beam), []
    for row in rows:
        start = time.perf_counter()
        caption_rows(trained, store, [row], options, batch_size=1)
        seconds.append(time.perf_counter() - start)
    return seconds


def strategy_speed(trained: TrainedModel, store, rows: list[int], beam: int, repeats: int) -> dict:
    """Batch-64 and batch-1 images/s (median of repeats), batching speedup, batch-1 latency."""
    caption_rows(trained, store, rows[:BATCH], DecodingOptions(beam_size=beam))  # warm-up
    batched = [throughput(trained, store, rows, beam, BATCH) for _ in range(repeats)]
    passes = [batch1_latencies(trained, store, rows, beam) for _ in range(repeats)]
    one_at_a_time = statistics.median(len(rows) / sum(p) for p in passes)
    latencies_ms = 1000 * np.array([s for p in passes for s in p])
    return {
        f"batch{BATCH}_img_s": statistics.median(batched),
        "batch1_img_s": one_at_a_time,
        "batched_speedup": statistics.median(batched) / one_at_a_time,
        "batch1_latency_ms_median": float(np.median(latencies_ms)),
        "batch1_latency_ms_p90": float(np.percentile(latencies_ms, 90)),
    }


def cache_vs_recompute(trained: TrainedModel, store, rows: list[int], repeats: int) -> dict:
    """Incremental (cached) against recomputed-prefix decoding: speeds and caption agreement."""
    recompute = dataclasses.replace(trained, model=RecomputePrefix(trained.model))
    out = {}
    for name, beam in (("greedy", 1), ("beam3", 3)):
        options = DecodingOptions(beam_size=beam)
        cached_captions = caption_rows(trained, store, rows, options)  # also the warm-up
        recomputed_captions = caption_rows(recompute, store, rows, options)
        differing = sum(a != b for a, b in zip(cached_captions, recomputed_captions))
        result = {"identical_captions": differing == 0, "differing_captions": differing}
        for batch in (BATCH, 1):
            cached = statistics.median(
                throughput(trained, store, rows, beam, batch) for _ in range(repeats)
            )
            full = statistics.median(
                throughput(recompute, store, rows, beam, batch) for _ in range(repeats)
            )
            result[f"batch{batch}"] = {"cached_img_s": cached, "recompute_img_s": full,
                                       "cache_speedup": cached / full}  # fmt: skip
        out[name] = result
    return out


def bench_run(run_dir: Path, dataset, args) -> dict:
    trained = load_checkpoint(run_dir)
    store, records = features_for_dataset(dataset, encoder_for(trained))
    test = [r for r in records if r.split == "test"][: args.limit]
    rows = store.rows([dataset.path(r) for r in test])
    name = trained.config["model"]["name"]
    out = {"model": name, "config": trained.config["model"]["config"], "test_images": len(rows),
           "max_length": trained.data_setting("max_length", 20)}  # fmt: skip
    for strategy, beam in STRATEGIES.items():
        out[strategy] = strategy_speed(trained, store, rows, beam, args.repeats)
        print(f"{run_dir} {strategy}: {json.dumps(out[strategy])}", flush=True)
    if name == "transformer":
        out["cache_vs_recompute"] = cache_vs_recompute(trained, store, rows, args.repeats)
        print(f"{run_dir} cache vs recompute: {json.dumps(out['cache_vs_recompute'])}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        parents=[common_options(output="decoding.json", threads=True)],
    )
    models = ("show_tell", "attention", "transformer")
    parser.add_argument("--runs", nargs="+", default=[f"runs/models/{m}" for m in models])
    parser.add_argument("--repeats", type=int, default=3, help="Timed passes per figure.")
    parser.add_argument("--limit", type=int, default=None, help="At most this many test images.")
    args = parser.parse_args()
    set_threads(args.threads)
    dataset = load_dataset(args.data)
    results = {
        "data": args.data,
        "repeats": args.repeats,
        "runs": {run: bench_run(Path(run), dataset, args) for run in args.runs},
    }
    write_results(args.output, results)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
