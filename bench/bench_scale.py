"""Benchmark: every stage of captionkit on a synthetic COCO-like dataset of N images, with its
time and peak memory, to see how each grows with N.

    .venv/bin/python bench/bench_scale.py --images 20000 [--output bench/results/scale_20000.json]
        [--steps 200] [--models show_tell,attention,updown,transformer] [--seed 0]
        [--workdir /tmp] [--keep] [--threads 2] [--decode-images 5000]
    .venv/bin/python bench/bench_scale.py --table A.json,B.json,C.json   # BENCHMARKS.md "Scale"

The data (seeded by `--seed`, written under a new folder in `--workdir`, removed at the end
unless `--keep`):
- a Karpathy `dataset_coco.json` of N images with 5 captions each: 5% val and 5% test, at most
  5,000 each (COCO's Karpathy split at N = 123,287), the rest `train` or (27%, as in COCO)
  `restval`; captions of 8 + NegBin(2, mean 2.5) words (mean 10.5, cut at 20), the words drawn
  from a Zipf-Mandelbrot law p(r) ~ (r + 3)^-1.5 over 25,000 made-up words: 489 training
  words seen 5 times or more at N = 1k, 3,567 at 20k, 7,476 at 60k, about 12k expected at COCO
  size (COCO's Karpathy vocabulary: 9.5k);
- no image files but one: `load_dataset` only checks that the image folder holds an image (it
  finds the folder by the first listed image), so the first image is a real 8x8 JPEG and the
  others are missing; nothing below opens an image (`prepare` runs as `prepare --quick`);
- a feature store of EfficientNet-Lite0's shapes (pooled [N, 1280], grid [N, 49, 1280], float16:
  15.5 GB at COCO size) of random features (ReLU'd normal; pooled = the grid's mean), written
  memory-mapped 512 images at a time into the folder and layout `extract_features` reads
  (`features.open_partial_arrays`, `store_index`, `finish_store`), so the run opens it as a
  cache hit, exactly as `captionkit train` does.

Stages (one JSON line each on stdout; the library's own prints go to stderr):
- `synthesize`: writing the above annotation file (not captionkit's work);
- `annotations`: `load_dataset` of the annotation file; `prepare`: `prepare_report` (`captionkit
  prepare --quick`: reads it again, counts, vocabulary, caption lengths);
- `tokenizer`: `build_tokenizer("word")` on the train captions (min count 5) and the training
  token ids (`run_data.train_tokens`, `feature_batches.token_array`);
- `store_write`: the random features written (generation included) and indexed (the block
  checksums read the whole store back); `store_open`: `features_for_dataset`, the cache hit of
  `captionkit train` (every path resolved and stat'ed, the index read and checked);
- `datamodule`: `run_data.caption_datamodule` as `captionkit train` builds it (tokens again,
  the store row of every caption) with the default recipe's data settings, and its first batch;
- `train_<model>`: `--steps` optimizer steps (after 5 untimed ones) of each decoder, with the
  model and optimizer settings of configs/flickr8k-mini/MODEL.yaml, batches of 64 captions from
  the data module (rows of the memory-mapped store), run by a Lightning Trainer as `captionkit
  train` runs `CaptioningModule` (validation off): s/step, captions/s and the implied epoch
  (training captions / 64 x s/step), the figure that grows with N (through the number of
  batches, and a little through s/step: the output layer grows with the vocabulary);
- `val_decode`: the validation decode of min(`--decode-images`, val) images, beam 3 (the default
  recipe's `val_beam_size`), batches of 64 from the data module, by the attention model just
  trained (random init if it was not: its captions run to the length limit);
- `evaluate`: `coco_metrics` (pycocoevalcap with Java: PTB tokenizer, BLEU, METEOR, ROUGE-L,
  CIDEr) of those captions against their references;
- `scst_reward_init`: `ScstReward` over all training references (PTB tokens, CIDEr-D document
  frequencies); `scst_step_rewards`: one SCST step's sampling and rewards (`ScstModule._sample`:
  12 images x 5 samples, the attention model), the reward alone timed too;
- `neighbours_write`: `index_training_images` (re-ranking's neighbour index of the training
  images, as training writes it); `neighbours_query`: `NeighbourIndex.load` and a k-NN query
  (k = 60) for 64 images.

Memory per stage: `rss_start_mib` (resident set at the start), `peak_rss_mib` (the kernel's
high-water mark VmHWM, reset at the stage start through /proc/self/clear_refs, else the largest
of /proc/self/statm sampled every 20 ms), `peak_anon_mib` (largest sampled resident set less its
file-backed pages: memory-mapped store pages count in the resident set, but the kernel can drop
them, so this is the part that must fit in RAM) and `peak_children_mib` (the largest summed
resident set of child processes, Java's, sampled the same way).
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import json
import math
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import lightning as L
import numpy as np
import torch
from common import RESULTS, machine, write_results

from captionkit.data import load_dataset
from captionkit.data.dataset_report import prepare_report
from captionkit.data.tokenizers import build_tokenizer
from captionkit.decoding import DecodingOptions, decode
from captionkit.encoders import create_encoder
from captionkit.encoders.features import (
    features_for_dataset,
    finish_store,
    open_partial_arrays,
    store_folder,
    store_index,
)
from captionkit.encoders.reuse import file_stat
from captionkit.metrics.coco_metrics import coco_metrics
from captionkit.models import MODELS, create_model
from captionkit.reranking.neighbours import NeighbourIndex, index_training_images
from captionkit.training.config import RunConfig
from captionkit.training.feature_batches import token_array
from captionkit.training.module import CaptioningModule
from captionkit.training.presets import DEFAULT_PRESET, preset_config
from captionkit.training.run_data import caption_datamodule, train_tokens
from captionkit.training.scst import ScstModule, ScstReward

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "configs" / "flickr8k-mini"
GRID_TOKENS, FEATURE_DIM = 49, 1280  # EfficientNet-Lite0 at 224 px, the default encoder
CAPTIONS_PER_IMAGE = 5
WORDS, ZIPF_EXPONENT, ZIPF_OFFSET = 25_000, 1.5, 3
RESTVAL = 30_504 / 113_287  # COCO's Karpathy split: restval images among the training ones
WRITE_CHUNK = 512  # images per chunk of the store write: 64 MB of float16 grid
WARMUP_STEPS = 5
SCST_IMAGES = 12  # SCST batches: 64 // 5 samples
KNN_QUERIES, KNN_K = 64, 60
MIB = 1 << 20
DEFAULT_MODEL = preset_config(DEFAULT_PRESET).model  # attention: it decodes and samples below


class PeakMemory:
    """Resident memory of this process and of its children, sampled by a background thread;
    `start()` and `stop()` bracket a stage."""

    def __init__(self, interval: float = 0.02):
        self.page = os.sysconf("SC_PAGE_SIZE")
        self.interval, self.peak, self.generation = interval, {}, 0
        self.lock = threading.Lock()
        threading.Thread(target=self._run, daemon=True).start()

    def _sample(self) -> dict:
        with open("/proc/self/statm") as f:
            resident, shared = (int(x) for x in f.read().split()[1:3])
        return {"rss": resident * self.page, "anon": (resident - shared) * self.page,
                "children": self._children_rss(os.getpid())}  # fmt: skip

    def _children_rss(self, pid: int) -> int:
        total = 0
        for tasks in glob.glob(f"/proc/{pid}/task/*/children"):
            try:
                children = Path(tasks).read_text().split()
            except OSError:  # the thread has ended
                continue
            for child in children:
                with contextlib.suppress(OSError), open(f"/proc/{child}/statm") as f:
                    total += int(f.read().split()[1]) * self.page
                total += self._children_rss(int(child))
        return total

    def _run(self) -> None:
        while True:
            time.sleep(self.interval)
            generation = self.generation
            sample = self._sample()
            with self.lock:
                if generation == self.generation:  # not a sample of the stage before
                    self.peak = {k: max(v, self.peak.get(k, 0)) for k, v in sample.items()}

    @staticmethod
    def _reset_high_water_mark() -> bool:
        try:  # "5": reset the peak resident set size (Linux >= 4.0)
            Path("/proc/self/clear_refs").write_text("5")
            return True
        except OSError:
            return False

    @staticmethod
    def _high_water_mark() -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        return 0

    def start(self) -> int:
        """Start a stage: the resident set now (bytes)."""
        self.hwm = self._reset_high_water_mark()
        sample = self._sample()
        with self.lock:
            self.peak, self.generation = sample, self.generation + 1
        return sample["rss"]

    def stop(self) -> dict:
        """End a stage: its peaks (bytes)."""
        sample = self._sample()
        with self.lock:
            peak = {k: max(v, self.peak.get(k, 0)) for k, v in sample.items()}
        if self.hwm:
            peak["rss"] = max(peak["rss"], self._high_water_mark())
        return peak


class Stages:
    """Times stages, prints one JSON line each and keeps them."""

    def __init__(self, images: int):
        self.images, self.rows, self.memory = images, [], PeakMemory()

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[dict]:
        """Time the block and its memory; it may add figures to the yielded dict."""
        extra: dict = {}
        start_rss = self.memory.start()
        start = time.perf_counter()
        with contextlib.redirect_stdout(sys.stderr):  # stdout: the JSON lines only
            yield extra
        seconds = time.perf_counter() - start
        peak = self.memory.stop()
        row = {"stage": name, "images": self.images, "seconds": round(seconds, 3),
               "rss_start_mib": round(start_rss / MIB), "peak_rss_mib": round(peak["rss"] / MIB),
               "peak_anon_mib": round(peak["anon"] / MIB),
               "peak_children_mib": round(peak["children"] / MIB)}  # fmt: skip
        row |= {k: round(v, 4) if isinstance(v, float) else v for k, v in extra.items()}
        self.rows.append(row)
        print(json.dumps(row), flush=True)


# --- the synthetic dataset ---------------------------------------------------------------------


def made_up_words(n: int) -> np.ndarray:
    """`n` distinct lowercase words of consonant-vowel syllables, shortest first (the most
    frequent words are short, as in English); letters only, so each is one PTB token."""
    syllables = [c + v for c in "bdfghklmnprstvz" for v in "aeiou"]  # 75
    words, k = [], len(syllables)
    for i in range(n):
        parts, j, size = [], i, 1
        while j >= k**size:  # i-th word: 1 syllable for the first 75, then 2, then 3 ...
            j -= k**size
            size += 1
        for _ in range(size):
            parts.append(syllables[j % k])
            j //= k
        words.append("".join(parts))
    return np.array(words, dtype=object)


def split_sizes(n: int) -> tuple[int, int]:
    """(val, test) images: 5% each, at most 5,000 each (COCO's Karpathy split)."""
    held_out = min(5000, max(1, n // 20))
    return held_out, held_out


def synthetic_captions(n_captions: int, rng: np.random.Generator, words: np.ndarray) -> list:
    """`n_captions` raw captions (capitalised, most ending with a period) and their words."""
    lengths = np.minimum(8 + rng.negative_binomial(2, 2 / 4.5, n_captions), 20)
    p = (np.arange(1, len(words) + 1) + ZIPF_OFFSET) ** -ZIPF_EXPONENT
    drawn = words[rng.choice(len(words), size=int(lengths.sum()), p=p / p.sum())]
    ends = np.cumsum(lengths)
    period = rng.random(n_captions) < 0.6
    out = []
    for start, end, dot in zip((ends - lengths).tolist(), ends.tolist(), period.tolist()):
        tokens = drawn[start:end].tolist()
        raw = " ".join(tokens)
        out.append((raw[0].upper() + raw[1:] + ("." if dot else ""), tokens))
    return out


def write_karpathy(folder: Path, n: int, seed: int) -> dict:
    """`folder/dataset_coco.json` of `n` images (see the module docstring) and the first image."""
    rng = np.random.default_rng(seed)
    n_val, n_test = split_sizes(n)
    split = np.where(rng.random(n) < RESTVAL, "restval", "train").astype(object)
    order = rng.permutation(n)
    split[order[:n_val]], split[order[n_val : n_val + n_test]] = "val", "test"
    cocoids = rng.choice(600_000, size=n, replace=False)
    captions = synthetic_captions(n * CAPTIONS_PER_IMAGE, rng, made_up_words(WORDS))
    images = []
    for i in range(n):
        filepath = "train2014" if split[i] == "train" else "val2014"
        sentids = list(range(i * CAPTIONS_PER_IMAGE, (i + 1) * CAPTIONS_PER_IMAGE))
        sentences = [{"tokens": captions[s][1], "raw": captions[s][0], "imgid": i, "sentid": s}
                     for s in sentids]  # fmt: skip
        name = f"COCO_{filepath}_{cocoids[i]:012d}.jpg"
        entry = {"filepath": filepath, "sentids": sentids, "filename": name, "imgid": i}
        images.append(
            entry | {"split": split[i], "sentences": sentences, "cocoid": int(cocoids[i])}
        )
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "dataset_coco.json"
    path.write_text(json.dumps({"images": images, "dataset": "coco"}))
    first = folder / images[0]["filepath"] / images[0]["filename"]
    first.parent.mkdir(parents=True, exist_ok=True)
    from PIL import Image

    Image.new("RGB", (8, 8), (120, 90, 60)).save(first)
    return {"file_mib": round(path.stat().st_size / MIB, 1), "val": n_val, "test": n_test}


# --- the feature store --------------------------------------------------------------------------


def write_store(dataset, encoder, cache_dir: Path, rng: np.random.Generator) -> dict:
    """Random features of every image of `dataset`, written where `extract_features` would
    find them for `encoder` (its store folder, arrays, index and completion, without the
    encoder pass)."""
    paths = [Path(dataset.path(r)).resolve() for r in dataset.records]
    stats = [file_stat(p) for p in paths]
    folder = store_folder(encoder, paths, cache_dir, True, stats, None, None)
    partial = folder.with_name(f"{folder.name}.partial")
    partial.mkdir(parents=True)
    arrays = open_partial_arrays(partial, len(paths), GRID_TOKENS, FEATURE_DIM, True)
    for start in range(0, len(paths), WRITE_CHUNK):
        end = min(start + WRITE_CHUNK, len(paths))
        grid = rng.standard_normal((end - start, GRID_TOKENS, FEATURE_DIM), dtype=np.float32)
        np.maximum(grid, 0, out=grid)  # post-ReLU activations, as a CNN's
        arrays["grid"][start:end] = grid  # -> float16
        arrays["pooled"][start:end] = grid.mean(axis=1)
        arrays["progress"][start:end] = True
    arrays["grid"].flush(), arrays["pooled"].flush()
    finish_store(folder, arrays, store_index(encoder, paths, stats, True, {}))
    size = sum(f.stat().st_size for f in folder.iterdir())
    return {"store_gib": round(size / (1 << 30), 2)}


# --- training, decoding, scoring ----------------------------------------------------------------


class StepClock(L.Callback):
    """Times the optimizer steps after the first `warmup`."""

    def __init__(self, warmup: int):
        self.warmup, self.seen, self.captions = warmup, 0, 0
        self.start = self.end = 0.0

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self.seen += 1
        if self.seen > self.warmup:
            self.captions += batch["tokens"].shape[0]
        if self.seen == self.warmup:
            self.start = time.perf_counter()
        self.end = time.perf_counter()


def train_model(name: str, datamodule, vocab, steps: int) -> tuple[torch.nn.Module, dict]:
    """`steps` timed steps of model `name` (configs/flickr8k-mini/NAME.yaml) under Lightning."""
    config = RunConfig.from_yaml(CONFIGS / f"{name}.yaml")
    # What `caption_datamodule` would give this model: no grid rows for a model without one.
    datamodule.train.use_grid = MODELS[name].model_class.uses_grid
    torch.manual_seed(config.train.seed)
    model = create_model(name, vocab_size=len(vocab), feature_dim=FEATURE_DIM,
                         **config.model_args)  # fmt: skip
    module = CaptioningModule(model, vocab, config.optim, {}, DecodingOptions(1),
                              seed=config.train.seed)  # fmt: skip
    clock = StepClock(WARMUP_STEPS)
    trainer = L.Trainer(
        max_steps=WARMUP_STEPS + steps, max_epochs=-1, limit_val_batches=0, accelerator="cpu",
        devices=1, precision=config.train.precision,
        gradient_clip_val=config.optim.grad_clip or None,
        gradient_clip_algorithm=config.optim.grad_clip_algorithm,
        accumulate_grad_batches=config.optim.accumulate, callbacks=[clock], logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0,
    )  # fmt: skip
    trainer.fit(module, datamodule)
    datamodule.train.use_grid = True
    step = (clock.end - clock.start) / steps
    batches = len(datamodule.train) // config.train.batch_size  # the sampler drops the last
    return model, {"steps": steps, "s_per_step": step, "captions_s": clock.captions / steps / step,
                   "epoch_batches": batches, "epoch_s": round(batches * step, 1)}  # fmt: skip


def val_decode(model, datamodule, vocab, limit: int, options: DecodingOptions) -> dict:
    """Captions of the first `limit` validation images, decoded as validation does."""
    predictions = {}
    for batch in datamodule.val_dataloader():
        take = min(len(batch["keys"]), limit - len(predictions))
        if take <= 0:
            break
        grid = batch["grid"][:take] if batch["grid"] is not None else None
        results = decode(model, batch["pooled"][:take], grid, options)
        for key, hyps in zip(batch["keys"][:take], results):
            predictions[key] = vocab.decode(hyps[0].tokens)
    return predictions


def scst_step(model, vocab, reward: ScstReward, store, rows: list[int], keys: list[str]) -> dict:
    """One SCST step's samples and rewards (`ScstModule._sample`), and the reward alone."""
    config = preset_config(DEFAULT_PRESET)
    module = ScstModule(model, vocab, config.optim, {}, DecodingOptions(1), scst=config.scst,
                        reward=reward, max_length=config.data.max_length)  # fmt: skip
    pooled, grid = (
        torch.from_numpy(np.asarray(a[rows], dtype=np.float32)) for a in (store.pooled, store.grid)
    )
    start = time.perf_counter()
    tokens, _ = module._sample(pooled, grid, keys)
    sample_s = time.perf_counter() - start
    captions = [vocab.decode(t.tolist()) for t in tokens]
    each = [k for k in keys for _ in range(config.scst.samples)]
    start = time.perf_counter()
    reward(captions, each)
    return {"samples": len(captions), "sample_and_reward_s": sample_s,
            "reward_s": time.perf_counter() - start}  # fmt: skip


# --- the run ------------------------------------------------------------------------------------


def data_stages(bench: Stages, work: Path, args) -> dict:
    """Annotations, prepare, tokenizer, store: what the training stages read."""
    with bench.stage("synthesize") as extra:
        extra |= write_karpathy(work / "coco", args.images, args.seed)
    with bench.stage("annotations") as extra:
        dataset = load_dataset(work / "coco")
        extra |= {"captions": dataset.num_captions(), **dataset.split_sizes()}
    with bench.stage("prepare") as extra:
        report = prepare_report(work / "coco", check_images=False)
        extra |= {"vocabulary": report["vocabulary_size"], "problems": report["problems"],
                  "caption_words": report["caption_length"]}  # fmt: skip
    config = preset_config(DEFAULT_PRESET)  # the data settings `captionkit train` uses
    train = dataset.split("train")
    with bench.stage("tokenizer") as extra:
        vocab = build_tokenizer(config.data.tokenizer, (c for r in train for c in r.captions),
                                config.data.min_count, config.data.vocab_size)  # fmt: skip
        per_image, _ = train_tokens(config, vocab, train)
        tokens = token_array([ids for image in per_image for ids in image])
        extra |= {"vocabulary": len(vocab), "token_array": list(tokens.shape)}
    encoder = create_encoder()  # its fingerprint names the store, as for a real extraction
    assert encoder.feature_dim == FEATURE_DIM, encoder.feature_dim
    encoder.fingerprint()
    cache = work / "cache"
    with bench.stage("store_write") as extra:
        extra |= write_store(dataset, encoder, cache, np.random.default_rng(args.seed))
    with bench.stage("store_open") as extra:
        store, records = features_for_dataset(dataset, encoder, cache)
        extra |= {"built": store.report is not None, "usable": len(records)}
    train = [r for r in records if r.split == "train"]
    val = [r for r in records if r.split == "val"]
    with bench.stage("datamodule") as extra:
        datamodule, _ = caption_datamodule(config, encoder, store, dataset, train, val, vocab,
                                           True, work / "run")  # fmt: skip
        batch = next(iter(datamodule.train_dataloader()))
        extra |= {"train_captions": len(datamodule.train), "batch": list(batch["grid"].shape)}
    return {"dataset": dataset, "encoder": encoder, "store": store, "train": train, "val": val,
            "vocab": vocab, "datamodule": datamodule, "config": config}  # fmt: skip


def model_stages(bench: Stages, data: dict, args) -> torch.nn.Module:
    """Training steps of each model; the attention model (the default recipe's) is returned."""
    decoder = None
    for name in args.models.split(","):
        with bench.stage(f"train_{name}") as extra:
            model, figures = train_model(name, data["datamodule"], data["vocab"], args.steps)
            extra |= figures
        if name == DEFAULT_MODEL:
            decoder = model
    if decoder is None:  # not trained here: a fresh one decodes (to the length limit)
        config = RunConfig.from_yaml(CONFIGS / f"{DEFAULT_MODEL}.yaml")
        decoder = create_model(DEFAULT_MODEL, vocab_size=len(data["vocab"]),
                               feature_dim=FEATURE_DIM, **config.model_args)  # fmt: skip
    return decoder


def evaluation_stages(bench: Stages, data: dict, model, work: Path, args) -> None:
    """Validation decode, metrics, SCST rewards and the neighbour index."""
    vocab, store, config = data["vocab"], data["store"], data["config"]
    limit = min(args.decode_images, len(data["val"]))
    options = DecodingOptions(config.train.val_beam_size, max_length=config.data.max_length)
    with bench.stage("val_decode") as extra:
        start = time.perf_counter()
        predictions = val_decode(model, data["datamodule"], vocab, limit, options)
        seconds = time.perf_counter() - start
        lengths = [len(p.split()) for p in predictions.values()]
        extra |= {
            "decoded": len(predictions),
            "beam": options.beam_size,
            "img_s": len(predictions) / seconds,
            "mean_words": float(np.mean(lengths)),
        }
    references = {r.filename: r.captions for r in data["val"]}
    with bench.stage("evaluate") as extra:
        scores = coco_metrics(predictions, references)
        extra |= {"scored": len(predictions), "CIDEr": scores["CIDEr"], "METEOR": scores["METEOR"]}
    train = data["train"]
    with bench.stage("scst_reward_init") as extra:
        reward = ScstReward({r.filename: r.captions for r in train}, config.scst.bleu_weight)
        extra |= {"references": sum(len(r.captions) for r in train)}
    dataset = data["dataset"]
    some = train[:SCST_IMAGES]
    with bench.stage("scst_step_rewards") as extra:
        rows = store.rows([dataset.path(r) for r in some])
        extra |= scst_step(model, vocab, reward, store, rows, [r.filename for r in some])
    run = work / "run"
    with bench.stage("neighbours_write") as extra:
        paths = [dataset.path(r) for r in train]
        index_training_images(run, store, paths, train, data["encoder"].fingerprint())
        extra |= {"indexed": len(train)}
    queries = store.rows([dataset.path(r) for r in data["val"][:KNN_QUERIES]])
    with bench.stage("neighbours_query") as extra:
        index = NeighbourIndex.load(run)
        loaded = time.perf_counter()
        index.nearest(np.asarray(store.pooled[queries], dtype=np.float32), KNN_K)
        extra |= {"queries": len(queries), "k": KNN_K, "query_s": time.perf_counter() - loaded}


def run(args) -> dict:
    """All stages on a fresh synthetic dataset in a new folder under `args.workdir`."""
    torch.set_num_threads(args.threads)
    bench = Stages(args.images)
    Path(args.workdir).mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f"bench_scale-{args.images}-", dir=args.workdir))
    print(f"data in {work}", file=sys.stderr)
    start = time.perf_counter()
    try:
        data = data_stages(bench, work, args)
        model = model_stages(bench, data, args)
        evaluation_stages(bench, data, model, work, args)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return {"images": args.images, "seed": args.seed, "steps": args.steps,
            "total_seconds": round(time.perf_counter() - start, 1), "machine": machine(),
            "command": "python bench/bench_scale.py " + " ".join(sys.argv[1:]),
            "stages": bench.rows}  # fmt: skip


# --- the table ----------------------------------------------------------------------------------


# What each stage's work grows with; "fixed" ones do the same work at every N.
WORK = {
    "synthesize": "N images (the bench's own writing)",
    "annotations": "N images",
    "prepare": "N images",
    "tokenizer": "training captions",
    "store_write": "N images (125 KB each)",
    "store_open": "N images",
    "datamodule": "training captions",
    "train": "fixed: the steps",
    "epoch": "training captions / 64",
    "val_decode": "val images (5% of N, at most 5,000)",
    "evaluate": "val images, plus the Java start-ups",
    "scst_reward_init": "training captions",
    "scst_step_rewards": "fixed: 12 images x 5 samples",
    "neighbours_write": "training images",
    "neighbours_query": "training images (the index loaded), 64 queries",
}


def _seconds(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:.1f}" if x >= 10 else f"{x:.2f}"


def _exponent(t1: float, t2: float, n1: int, n2: int) -> str:
    """Growth exponent of a time from n1 to n2 images: log(t2 / t1) / log(n2 / n1)."""
    if t1 <= 0 or t2 <= 0:
        return "-"
    return f"{math.log(t2 / t1) / math.log(n2 / n1):.2f}"


def _table_rows(runs: list[dict]) -> list[tuple[str, str, list]]:
    """(row name, what its work grows with, per run: (seconds, peak RSS MiB, peak anonymous
    MiB) or None); each training stage is followed by the epoch it implies."""
    rows = []
    for name in [row["stage"] for row in runs[-1]["stages"]]:
        stage = [next((r for r in run["stages"] if r["stage"] == name), None) for run in runs]
        cells = [None if s is None else (s["seconds"], s["peak_rss_mib"], s["peak_anon_mib"])
                 for s in stage]  # fmt: skip
        if not name.startswith("train_"):
            rows.append((name, WORK.get(name, ""), cells))
            continue
        steps = runs[-1]["steps"]
        rows.append((f"{name} ({steps} steps)", f"{WORK['train']} ({steps})", cells))
        epochs = [None if s is None else (s["epoch_s"], None, None) for s in stage]
        rows.append((f"{name}: one epoch (implied)", WORK["epoch"], epochs))
    return rows


def table(paths: list[str]) -> str:
    """The markdown table of BENCHMARKS.md "Scale" from result files of several N: seconds
    and peak RSS (anonymous part in brackets) per N, growth exponents between successive N."""
    runs = sorted((json.loads(Path(p).read_text()) for p in paths), key=lambda r: r["images"])
    sizes = [run["images"] for run in runs]
    head = ["stage", "grows with", *(f"N = {n:,}: s, peak RSS (anon) MiB" for n in sizes)]
    head += [f"exponent {a:,} -> {b:,}" for a, b in zip(sizes, sizes[1:])]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for name, work, cells in _table_rows(runs):
        shown = []
        for cell in cells:
            if cell is None:
                shown.append("-")
            elif cell[1] is None:
                shown.append(_seconds(cell[0]))
            else:
                shown.append(f"{_seconds(cell[0])}, {cell[1]:,} ({cell[2]:,})")
        exponents = []
        for i, (a, b) in enumerate(zip(cells, cells[1:])):
            if work.startswith("fixed"):
                exponents.append("fixed work")
            elif a is None or b is None:
                exponents.append("-")
            else:
                exponents.append(_exponent(a[0], b[0], sizes[i], sizes[i + 1]))
        lines.append("| " + " | ".join([name, work, *shown, *exponents]) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000, help="N: images in the dataset.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=200, help="Timed training steps per model.")
    parser.add_argument("--models", default=",".join(MODELS), help="Comma-separated decoders.")
    parser.add_argument("--decode-images", type=int, default=5000,
                        help="Most validation images decoded and scored.")  # fmt: skip
    parser.add_argument("--threads", type=int, default=2, help="torch threads.")
    parser.add_argument("--workdir", default=tempfile.gettempdir(),
                        help="Where the run's data folder is made (the store: 15.5 GB at COCO "
                        "size).")  # fmt: skip
    parser.add_argument("--keep", action="store_true", help="Keep the data folder.")
    parser.add_argument("--output", default=None,
                        help="Result file (default bench/results/scale_N.json).")  # fmt: skip
    parser.add_argument(
        "--table",
        default=None,
        help="Print the markdown table of these result files (A.json,B.json).",
    )
    args = parser.parse_args()
    unknown = set(args.models.split(",")) - set(MODELS)
    if unknown or min(args.images, args.steps, args.decode_images, args.threads) < 1:
        parser.error(f"--models from {', '.join(MODELS)}; --images, --steps, --decode-images and "
                     "--threads at least 1")  # fmt: skip
    if args.table:
        print(table(args.table.split(",")))
        return
    results = run(args)
    output = write_results(args.output or RESULTS / f"scale_{args.images}.json", results)
    print(f"total {results['total_seconds']} s; written to {output}", file=sys.stderr)


if __name__ == "__main__":
    main()
