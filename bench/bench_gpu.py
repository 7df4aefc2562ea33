"""Benchmark: training, decoding and extraction throughput on a GPU, models taking turns in one
process; `make gpu-check` runs it after the tests marked `cuda`.

    .venv/bin/python bench/bench_gpu.py                  # synthetic features and captions
    .venv/bin/python bench/bench_gpu.py --data DIR       # a dataset's features and captions
    .venv/bin/python bench/bench_gpu.py --quick --device cpu   # smoke test: tiny sizes, seconds

Written to bench/results/gpu.json (after every figure, so a run cut short keeps what it measured)
and as markdown tables to bench/results/gpu.md:
- training, per registered decoder at its recipe's settings and batch (configs/flickr8k-mini/
  NAME.yaml), fp32 and bf16-mixed, through the engine as `captionkit train` runs it
  (common.engine_loop: Lightning, the caption data module reading the feature store in
  the main process, validation off): captions/s, and per step the GPU's time on the step and its
  idle time between steps (fetching the next batch from the store and copying it over), from CUDA
  events recorded at the start and end of every step, so the share of the time the GPU was busy;
  the CPU time of fetching a batch alone; and, from the measured time a step, one Flickr8k epoch
  (30,000 captions) and one COCO epoch (414,113 captions, train2014);
- decoding, on the same models after their training passes: beam-3 images/s at batch 64 and 250,
  plain and with consensus re-ranking (the default decoding: 8 candidates from a beam of 8,
  CIDEr-D against the captions of the 60 nearest training images, on the CPU), features read
  from the store and copied to the GPU per batch, and the mean words of the captions found;
- extraction (EfficientNet-Lite0): images/s of the forward pass alone on decoded images
  (common.forward_only), fp32 and bf16, and of the whole pipeline (`extract_features` from
  a cold cache: decode, resize, forward, write);
- the peak GPU memory of each figure.

Without --data the features are random tensors of the real shapes (Lite0: 1280-d, 7 x 7 grid,
memory-mapped float16 as a store holds them), the captions random words of a 3,000-word
vocabulary with Flickr8k-like lengths, 5 per image, and the images for extraction smooth random
500 x 375 JPEGs: enough for throughput (which depends on shapes, not values), except that
untrained decoders seldom end a caption early, so decoding figures are for long captions (see
the mean words). Timings exclude setup; every figure is one pass after a warm-up (`--repeats`
for training: the median pass). The sections run in the order training, extraction, decoding;
with `--budget-s`, figures not started by then are left out, and the tables say so.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import lightning as L
import numpy as np
import torch
from common import CONFIGS, engine_loop, forward_only, sync
from PIL import Image

from captionkit.data import load_dataset
from captionkit.data.image_files import load_image
from captionkit.data.tokenizers import build_tokenizer
from captionkit.data.vocab import SPECIALS, Vocabulary
from captionkit.decoding import DecodingOptions, decode
from captionkit.encoders import FeatureStore, create_encoder, extract_features
from captionkit.encoders.features import features_for_dataset
from captionkit.models import MODELS, create_model
from captionkit.reranking import NeighbourIndex, Reranker, RerankOptions
from captionkit.reranking.neighbours import l2_normalised
from captionkit.training.config import RunConfig
from captionkit.training.feature_batches import CaptionDataModule, CaptionPairs, ImageRows

RESULTS = Path(__file__).resolve().parent / "results"
EPOCHS = {"flickr8k": 30_000, "coco": 414_113}  # training captions of one epoch
PRECISIONS = ("32", "bf16-mixed")
QUICK_SIZES = {  # --quick: tiny models, as the tests' (tests/conftest.py TINY)
    "show_tell": {"hidden_dim": 16, "embed_dim": 16},
    "attention": {"hidden_dim": 16, "embed_dim": 16, "attention_dim": 16},
    "updown": {"hidden_dim": 16, "embed_dim": 16, "attention_dim": 16},
    "transformer": {"d_model": 16, "n_heads": 2, "n_layers": 1, "d_ff": 32},
}


class PeakMemory:
    """The peak GPU memory (MiB) allocated inside the block; None on the CPU."""

    def __init__(self, device: torch.device):
        self.device, self.mib = device, None

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            sync(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            sync(self.device)
            self.mib = round(torch.cuda.max_memory_allocated(self.device) / 2**20, 1)


# --- data ---------------------------------------------------------------------------------------


def synthetic_data(folder: Path, args) -> dict:
    """Random features of the real shapes, memory-mapped float16 as a store holds them, and
    random captions (module docstring)."""
    rng = np.random.default_rng(0)
    n, dim, positions = args.images, args.feature_dim, args.grid_positions
    for name, shape in (("pooled", (n, dim)), ("grid", (n, positions, dim))):
        array = np.lib.format.open_memmap(folder / f"{name}.npy", "w+", np.float16, shape)
        for start in range(0, n, 256):  # in slices: a COCO-sized grid need not fit in memory
            block = rng.standard_normal((min(256, n - start), *shape[1:]), dtype=np.float32)
            array[start : start + 256] = np.abs(block)  # post-ReLU-like, as Lite0's
        array.flush()
    pooled = np.load(folder / "pooled.npy", mmap_mode="r")
    grid = np.load(folder / "grid.npy", mmap_mode="r")
    keys = [f"synthetic_{i:06d}.jpg" for i in range(n)]
    store = FeatureStore(folder, keys, pooled, grid)
    vocab = Vocabulary(f"w{i}" for i in range(args.vocab - len(SPECIALS)))
    words = np.array(vocab.itos[len(SPECIALS) :])
    lengths = np.clip(np.rint(rng.normal(11.5, 3.5, (n, 5))), 3, 20).astype(int)  # Flickr8k-like
    captions = [[" ".join(rng.choice(words, k)) for k in image] for image in lengths]
    train = int(0.8 * n)
    what = (f"synthetic: {n} images of random features (1 x {dim} pooled, {positions} x {dim} "
            f"grid), 5 random captions each, {len(vocab)}-token vocabulary")  # fmt: skip
    return {"store": store, "vocab": vocab, "feature_dim": dim,
            "train": (list(range(train)), captions[:train]),
            "test": list(range(train, n)) or list(range(n)), "images": None,
            "what": what}  # fmt: skip


def dataset_data(args, device: torch.device) -> dict:
    """A dataset's cached features (extracted first if need be, on `device`) and captions."""
    dataset = load_dataset(args.data)
    encoder = create_encoder()
    store, records = features_for_dataset(dataset, encoder, device=str(device))
    train = [r for r in records if r.split == "train"]
    test = [r for r in records if r.split == "test"] or records
    data_config = RunConfig.from_yaml(CONFIGS / "show_tell.yaml").data  # all recipes share it
    vocab = build_tokenizer(data_config.tokenizer, (c for r in train for c in r.captions),
                            data_config.min_count, data_config.vocab_size)  # fmt: skip
    rows = store.rows([dataset.path(r) for r in train])
    return {"store": store, "vocab": vocab, "feature_dim": encoder.feature_dim,
            "train": (rows, [r.captions for r in train]),
            "test": store.rows([dataset.path(r) for r in test]),
            "images": [dataset.path(r) for r in dataset.records],
            "what": f"{args.data}: {len(train)} training images, {len(test)} test images, "
                    f"{len(vocab)}-token vocabulary"}  # fmt: skip


def caption_data(data: dict, config: RunConfig, use_grid: bool) -> CaptionDataModule:
    """Batches of `config`'s recipe over the training captions, as `captionkit train` makes them
    (`CaptionPairs` over the store, shuffled, `bucket_batches` as the recipe says)."""
    rows, captions = data["train"]
    tokens = [data["vocab"].encode(c, config.data.max_length) for caps in captions for c in caps]
    pairs = [row for row, caps in zip(rows, captions) for _ in caps]
    train = CaptionPairs(data["store"], pairs, tokens, use_grid)
    val = ImageRows(data["store"], data["test"][:1], ["val"], use_grid)
    return CaptionDataModule(train, val, config.train.batch_size, config.train.seed,
                             config.train.bucket_batches)  # fmt: skip


# --- training -----------------------------------------------------------------------------------


class StepClock(L.Callback):
    """The start and end of every training step: CUDA events on the GPU's stream, so that the gap
    between one step's end and the next one's start is time the GPU sat idle (the next batch
    being fetched and copied); wall-clock times on the CPU, where the two coincide."""

    def __init__(self, device: torch.device):
        self.cuda, self.starts, self.ends = device.type == "cuda", [], []

    def _now(self):
        if not self.cuda:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        self.starts.append(self._now())

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self.ends.append(self._now())

    def _ms(self, a, b) -> float:
        return a.elapsed_time(b) if self.cuda else 1000 * (b - a)

    def summary(self, warmup: int) -> dict:
        """Mean GPU ms per step, GPU idle ms between steps, and the busy share, over the steps
        after `warmup`."""
        if self.cuda:
            torch.cuda.synchronize()
        step = [self._ms(s, e) for s, e in zip(self.starts, self.ends)][warmup:]
        idle = [self._ms(e, s) for e, s in zip(self.ends, self.starts[1:])][warmup - 1 :]
        busy = sum(step) / (sum(step) + sum(idle))
        return {"gpu_step_ms": statistics.mean(step), "gpu_idle_ms": statistics.mean(idle),
                "gpu_busy": busy}  # fmt: skip


def loader_ms(datamodule: CaptionDataModule, batches: int) -> float:
    """CPU ms to fetch one training batch from the store, the data loader alone."""
    loader = iter(datamodule.train_dataloader())
    next(loader)  # the first batch opens the memory maps
    start = time.perf_counter()
    for _ in range(batches):
        next(loader)
    return 1000 * (time.perf_counter() - start) / batches


def train_figures(model, datamodule, vocab, config: RunConfig, args, device) -> dict:
    """One engine pass: captions/s, the step clock's figures and the epoch times they give."""
    clock = StepClock(device)
    with PeakMemory(device) as peak:
        out = engine_loop(model, datamodule, vocab, config, args, device, (clock,))
    out |= clock.summary(args.warmup)
    out["peak_mib"] = peak.mib
    step_s = out["seconds"] / out["batches"]
    for name, captions in EPOCHS.items():
        out[f"{name}_epoch_min"] = math.ceil(captions / config.train.batch_size) * step_s / 60
    return out


def bench_training(data: dict, args, device, deadline: float, save, results: dict) -> dict:
    """Every model at both precisions, the models taking turns within each round, into
    `results`; returns the models, as the last pass left them."""
    models, passes = {}, {}
    for name in args.models:
        config = RunConfig.from_yaml(CONFIGS / f"{name}.yaml")
        if args.quick:
            config.model_args, config.train.batch_size = QUICK_SIZES[name], args.quick_batch
        torch.manual_seed(config.train.seed)
        model = create_model(name, vocab_size=len(data["vocab"]), feature_dim=data["feature_dim"],
                             **config.model_args)  # fmt: skip
        datamodule = caption_data(data, config, MODELS[name].model_class.uses_grid)
        models[name] = (config, model, {k: v.clone() for k, v in model.state_dict().items()},
                        datamodule)  # fmt: skip
    for _ in range(args.repeats):
        for name, (config, model, initial, datamodule) in models.items():
            for precision in args.precisions:
                if time.monotonic() > deadline:
                    results.setdefault("skipped", "the time budget ran out")
                    continue
                config.train.precision = precision
                model.load_state_dict(initial)
                figures = train_figures(model, datamodule, data["vocab"], config, args, device)
                passes.setdefault((name, precision), []).append(figures)
                entry = results.setdefault(name, {"batch_size": config.train.batch_size,
                                                  "model_args": config.model_args})  # fmt: skip
                entry[precision] = median_pass(passes[(name, precision)])
                save()
                print(f"train {name} {precision}: {json.dumps(entry[precision])}", flush=True)
    for name, (*_, datamodule) in models.items():
        if name in results:
            results[name]["loader_ms_per_batch"] = loader_ms(datamodule, args.batches)
    save()
    return {name: m[1] for name, m in models.items()}


def median_pass(passes: list[dict]) -> dict:
    """The pass of median captions/s, with every pass's figure."""
    median = sorted(passes, key=lambda p: p["captions_s"])[(len(passes) - 1) // 2]
    return median | {"passes_captions_s": [p["captions_s"] for p in passes]}


# --- decoding -----------------------------------------------------------------------------------


def features(store: FeatureStore, rows: list[int], uses_grid: bool, device: torch.device):
    """pooled [B, D] and grid [B, L, D] (None unless the model reads it), on `device`."""
    pooled = torch.from_numpy(np.asarray(store.pooled[rows], dtype=np.float32)).to(device)
    if not uses_grid:
        return pooled, None
    return pooled, torch.from_numpy(np.asarray(store.grid[rows], dtype=np.float32)).to(device)


def decode_speed(model, data: dict, rows: list[int], batch: int, options: DecodingOptions,
                 reranker: Reranker | None, device) -> dict:  # fmt: skip
    """Images/s of captioning `rows` in batches of `batch` (after a warm-up batch), and the
    mean words of the captions chosen."""
    vocab, words = data["vocab"], []

    def caption(chunk: list[int]) -> list[str]:
        pooled, grid = features(data["store"], chunk, model.uses_grid, device)
        results = decode(model, pooled, grid, options)
        text = lambda h: vocab.decode(h.tokens)  # noqa: E731
        if reranker is not None:
            results = reranker.rerank(results, text, pooled.cpu())
        return [text(hyps[0]) for hyps in results]

    caption(rows[:batch])
    with PeakMemory(device) as peak:
        start = time.perf_counter()
        for i in range(0, len(rows), batch):
            words += [len(c.split()) for c in caption(rows[i : i + batch])]
        seconds = time.perf_counter() - start
    return {"images_s": len(rows) / seconds, "mean_words": statistics.mean(words),
            "peak_mib": peak.mib}  # fmt: skip


def neighbour_reranker(data: dict) -> Reranker:
    """Consensus re-ranking (the default settings) over an index of the training images."""
    rows, captions = data["train"]
    pooled = l2_normalised(np.asarray(data["store"].pooled[rows], dtype=np.float32))
    index = NeighbourIndex(pooled, [str(r) for r in rows], [list(c) for c in captions])
    return Reranker(RerankOptions("consensus"), index)


def bench_decoding(models: dict, data: dict, args, device, deadline: float, save,
                   results: dict) -> None:  # fmt: skip
    """Every model, plain and re-ranked, at every batch size, into `results`."""
    rows = (data["test"] * math.ceil(args.decode_images / len(data["test"])))[: args.decode_images]
    reranker = neighbour_reranker(data)
    beam = DecodingOptions(beam_size=3)
    rerank = reranker.options.decoding(beam)  # a beam of 8, its 8 best
    results |= {"images": len(rows), "batches": args.decode_batches, "plain": beam.describe(),
                "consensus": f"{rerank.describe()}, {reranker.options.describe()}"}  # fmt: skip
    for model in models.values():
        model.to(device).eval()
    # The models take turns at each setting: a budget that runs out leaves the last settings out,
    # not the last models.
    for batch in args.decode_batches:
        for how, options, ranker in (("plain", beam, None), ("consensus", rerank, reranker)):
            for name, model in models.items():
                if time.monotonic() > deadline:
                    results.setdefault("skipped", "the time budget ran out")
                    continue
                figures = decode_speed(model, data, rows, batch, options, ranker, device)
                results.setdefault(name, {}).setdefault(str(batch), {})[how] = figures
                save()
                print(f"decode {name} batch {batch} {how}: {json.dumps(figures)}", flush=True)
    for model in models.values():
        model.cpu()


# --- extraction ---------------------------------------------------------------------------------


def synthetic_images(folder: Path, n: int, size: tuple[int, int]) -> list[Path]:
    """Smooth random JPEGs (upsampled noise: they compress and decode as photos roughly do)."""
    rng, paths = np.random.default_rng(1), []
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        small = rng.integers(0, 255, (size[1] // 16, size[0] // 16, 3), dtype=np.uint8)
        path = folder / f"{i:05d}.jpg"
        Image.fromarray(small).resize(size, Image.BICUBIC).save(path, quality=90)
        paths.append(path)
    return paths


def bench_extraction(paths: list[Path], args, device, deadline: float, save,
                     results: dict) -> None:  # fmt: skip
    """The forward pass alone and the whole pipeline, into `results`."""
    encoder = create_encoder()
    transform = encoder.transform()
    pixels = torch.stack([transform(load_image(p)) for p in paths])
    results |= {"images": len(paths), "batch_size": args.extract_batch}
    amps = [None, "bf16"]
    runs = [(f"forward_{amp or 'fp32'}", "forward", amp, 0) for amp in amps]
    runs += [(f"pipeline_fp32_{w}_workers", "pipeline", None, w) for w in args.workers]
    runs += [(f"pipeline_bf16_{args.workers[-1]}_workers", "pipeline", "bf16", args.workers[-1])]
    for name, what, amp, workers in runs:
        if time.monotonic() > deadline:
            results.setdefault("skipped", "the time budget ran out")
            continue
        with PeakMemory(device) as peak:
            if what == "forward":
                speed = forward_only(encoder, pixels, args.extract_batch, True, str(device), amp)
            else:
                with tempfile.TemporaryDirectory() as cache:
                    start = time.perf_counter()
                    extract_features(encoder, paths, Path(cache), True, args.extract_batch,
                                     workers, device=str(device), amp=amp)  # fmt: skip
                    speed = len(paths) / (time.perf_counter() - start)
        results[name] = {"images_s": speed, "peak_mib": peak.mib}
        save()
        print(f"extract {name}: {json.dumps(results[name])}", flush=True)


# --- report -------------------------------------------------------------------------------------


def machine(device: torch.device) -> str:
    text = (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch "
            f"{torch.__version__}")  # fmt: skip
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        text += f", {props.name} ({props.total_memory / 2**30:.0f} GiB)"
    return text


def markdown(results: dict) -> str:
    """The figures as markdown tables."""
    lines = [
        f"GPU benchmark ({results['date']}): {results['machine']}; device "
        f"{results['device']}; data: {results.get('data')}.",
        "",
        "Training (the engine, as `captionkit train` runs it; GPU ms and idle ms from CUDA "
        "events at each step's start and end, wall-clock ms on a CPU; epochs from the measured "
        "time a step):",
        "",
    ]
    training = results.get("training", {})
    lines += ["| model | batch | precision | captions/s | GPU ms/step | GPU idle ms/step "
              "| GPU busy | loader ms/batch (CPU) | Flickr8k epoch | COCO epoch | peak MiB |",
              "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for name, entry in training.items():
        if not isinstance(entry, dict):
            continue
        for precision in PRECISIONS:
            if precision not in entry:
                continue
            x = entry[precision]
            lines.append(
                f"| {name} | {entry['batch_size']} | {precision} | {x['captions_s']:,.0f} "
                f"| {x['gpu_step_ms']:.1f} | {x['gpu_idle_ms']:.1f} | {100 * x['gpu_busy']:.0f}% "
                f"| {entry.get('loader_ms_per_batch', float('nan')):.1f} "
                f"| {x['flickr8k_epoch_min']:.2f} min | {x['coco_epoch_min']:.1f} min "
                f"| {x['peak_mib'] if x['peak_mib'] is not None else '-'} |"
            )
    decoding = results.get("decoding", {})
    batches = [str(b) for b in decoding.get("batches", [])]
    lines += ["", f"Decoding, images/s ({decoding.get('images', 0)} images; plain: "
              f"{decoding.get('plain')}; consensus: {decoding.get('consensus')}; mean words of "
              "the captions found in brackets):", "",
              "| model | " + " | ".join(f"batch {b} plain | batch {b} consensus"
                                       for b in batches) + " |",
              "|---|" + "---:|" * (2 * len(batches))]  # fmt: skip
    for name, entry in decoding.items():
        if not isinstance(entry, dict):
            continue
        cells = []
        for b in batches:
            for how in ("plain", "consensus"):
                x = entry.get(b, {}).get(how)
                cells.append(f"{x['images_s']:,.0f} ({x['mean_words']:.1f})" if x else "-")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    extraction = results.get("extraction", {})
    lines += ["", f"Extraction, EfficientNet-Lite0 ({extraction.get('images', 0)} images, batch "
              f"{extraction.get('batch_size')}):", "", "| what | images/s | peak MiB |",
              "|---|---:|---:|"]  # fmt: skip
    for name, x in extraction.items():
        if isinstance(x, dict):
            peak = x["peak_mib"] if x["peak_mib"] is not None else "-"
            lines.append(f"| {name} | {x['images_s']:,.0f} | {peak} |")
    skipped = [k for k in ("training", "decoding", "extraction") if "skipped" in results.get(k, {})]
    if skipped:
        lines += ["", f"Cut short by the time budget: {', '.join(skipped)}."]
    return "\n".join(lines) + "\n"


# --- main ---------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None, help="A dataset (default: synthetic data).")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--models", default=",".join(sorted(MODELS)))
    parser.add_argument("--precisions", default=",".join(PRECISIONS))
    parser.add_argument("--batches", type=int, default=40, help="Timed training batches.")
    parser.add_argument("--warmup", type=int, default=5, help="Untimed training batches first.")
    parser.add_argument("--repeats", type=int, default=1, help="Training passes per figure.")
    parser.add_argument("--images", type=int, default=1500, help="Synthetic images.")
    parser.add_argument("--decode-images", type=int, default=250)
    parser.add_argument("--decode-batches", default="64,250")
    parser.add_argument("--extract-images", type=int, default=512)
    parser.add_argument("--extract-batch", type=int, default=64)
    parser.add_argument("--workers", default="1,8", help="Pipeline decoding processes to try.")
    parser.add_argument(
        "--budget-s",
        type=float,
        default=None,
        help="Skip the figures not started after this many seconds.",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="Smoke test: tiny models, features and batches (any device).",
    )
    parser.add_argument("--output", default=str(RESULTS / "gpu.json"))
    args = parser.parse_args(argv)
    args.feature_dim, args.grid_positions, args.vocab = 1280, 49, 3000
    args.quick_batch = 8
    if args.quick:
        args.batches, args.warmup, args.images, args.decode_images = 2, 1, 48, 6
        args.decode_batches, args.extract_images, args.extract_batch = "3,6", 3, 3
        args.feature_dim, args.grid_positions, args.vocab, args.workers = 32, 4, 60, "0"
    args.models = args.models.split(",")
    args.precisions = args.precisions.split(",")
    args.decode_batches = [int(b) for b in args.decode_batches.split(",")]
    args.workers = [int(w) for w in args.workers.split(",")]
    args.warmup = max(1, args.warmup)  # the first step pays for setup
    return args


def run(args: argparse.Namespace) -> dict:
    """Every figure, written to `args.output` (and its .md) as it comes; returns them."""
    auto = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(auto if args.device == "auto" else args.device)
    deadline = time.monotonic() + (args.budget_s or math.inf)
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    results = {
        "date": datetime.date.today().isoformat(), "machine": machine(device),
        "device": str(device), "quick": args.quick,
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
        "timed_batches": args.batches, "warmup_batches": args.warmup, "repeats": args.repeats,
    }  # fmt: skip

    def save() -> None:
        output.write_text(json.dumps(results, indent=2) + "\n")
        output.with_suffix(".md").write_text(markdown(results))

    with tempfile.TemporaryDirectory() as tmp:
        data = dataset_data(args, device) if args.data else synthetic_data(Path(tmp), args)
        results["data"] = data.pop("what")
        results |= {"training": {}, "decoding": {}, "extraction": {}}
        models = bench_training(data, args, device, deadline, save, results["training"])
        paths = data["images"]
        if paths is None:
            size = (64, 48) if args.quick else (500, 375)
            paths = synthetic_images(Path(tmp) / "images", args.extract_images, size)
        bench_extraction(paths[: args.extract_images], args, device, deadline, save,
                         results["extraction"])  # fmt: skip
        bench_decoding(models, data, args, device, deadline, save, results["decoding"])
    save()
    return results


def main() -> None:
    results = run(parse_args())
    print(markdown(results))


if __name__ == "__main__":
    main()
