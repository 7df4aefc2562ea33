"""What the bench scripts share: their common options, the machine a figure is measured on,
writing a results file, and the helpers of the quality benchmarks (per-image CIDEr-D, bootstrap
intervals, training a named variant, cross-validation folds of the training split).

The scripts run from the project root (`.venv/bin/python bench/NAME.py --help`) and write their
results to `bench/results/` by default; BENCHMARKS.md cites each file it shows figures from.
Nothing here or in a script uses a private name of `captionkit` (`tests/test_bench.py`).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import random
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import numpy as np
import torch
import yaml
from torch import nn

from captionkit.data import tokenize
from captionkit.data.vocab import Vocabulary
from captionkit.decoding import DecodingOptions
from captionkit.encoders.extraction import extraction_settings, precision
from captionkit.evaluation.evaluate import caption_rows, evaluate_run
from captionkit.metrics.cider_d import CiderD
from captionkit.reranking import RerankOptions
from captionkit.training.config import RunConfig
from captionkit.training.module import CaptioningModule

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
CONFIGS = ROOT / "configs" / "flickr8k-mini"  # the decoders' recipes the speed benchmarks use
"""Where results files go (the ones BENCHMARKS.md cites)."""
VARIANTS = ROOT / "bench" / "variants"
"""Named variants of an experiment, as data: `VARIANTS / f"{name}.yaml"` (see `load_variants`)."""
DEFAULT_DATA = "../shared/data/flickr8k-mini"
"""flickr8k-mini lives beside the project, not in it."""

PLAIN = RerankOptions("none")
"""The beam's own best: how every quality figure without re-ranking is measured (the default
decoding re-ranks, `RerankOptions()`)."""


# --- options, machine, results -------------------------------------------------------------------


def common_options(output: str | None = None, data: bool = True,
            threads: bool = False) -> argparse.ArgumentParser:  # fmt: skip
    """A parent parser with the options the scripts share, for
    `argparse.ArgumentParser(parents=[common.options(...)])`: `--data` (the dataset, flickr8k-mini
    by default), `--output` (the results file; `output` is its default name under
    bench/results/) and `--threads` (torch threads; see `set_threads`)."""
    parser = argparse.ArgumentParser(add_help=False)
    if data:
        help = f"Dataset folder or annotation file (default {DEFAULT_DATA})."
        parser.add_argument("--data", default=DEFAULT_DATA, help=help)
    if output is not None:
        parser.add_argument("--output", type=Path, default=RESULTS / output,
                            help=f"Results file (default bench/results/{output}).")  # fmt: skip
    if threads:
        parser.add_argument("--threads", type=int, default=None,
                            help="torch threads (default: torch's, all cores).")  # fmt: skip
    return parser


def set_threads(threads: int | None) -> None:
    """Use `threads` torch threads (None: leave torch's default)."""
    if threads:
        import torch

        torch.set_num_threads(threads)


def machine() -> dict:
    """The machine a figure is measured on: CPU model, cores, torch threads, GPU (None without
    one), torch and Python versions, and the date."""
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "threads": torch.get_num_threads(),
            "gpu": gpu, "torch": torch.__version__, "python": platform.python_version(),
            "date": datetime.date.today().isoformat()}  # fmt: skip


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), else what `platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def write_results(path: str | Path, payload: dict) -> Path:
    """Write `payload` as JSON to `path` (its folder made if needed), with the `machine()` it was
    measured on as "machine" unless the payload already has one; returns the path."""
    record = payload if "machine" in payload else {"machine": machine(), **payload}
    return write_json(path, record)


def write_json(path: str | Path, payload) -> Path:
    """Write `payload` as JSON as it is: for intermediate files another command reads back
    (per-image scores), where an added key would be read as data."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path


# --- scoring -------------------------------------------------------------------------------------


def per_image_cider(predictions: dict[str, str], references: dict[str, list[str]]) -> np.ndarray:
    """CIDEr-D of every image (captionkit's exact `CiderD` over PTB-tokenized captions; its mean
    is pycocoevalcap's), in key order."""
    words = {k: [" ".join(tokenize(c)) for c in refs] for k, refs in references.items()}
    keys = sorted(predictions)
    return CiderD(words).score([" ".join(tokenize(predictions[k])) or "a" for k in keys], keys)


def split_scores(runs, data, split: str, rerank: RerankOptions | None = None) -> dict[str, float]:
    """Per-image CIDEr-D on `split` of a run (a list of runs: their ensemble), beam 3, `<unk>`
    never generated, re-ranked by `rerank` if given (else the plain beam); no Java needed."""
    ev = evaluate_run(runs, data, split=split, meteor=False, rerank=rerank or PLAIN,
                      options=DecodingOptions(beam_size=3))  # fmt: skip
    keys = sorted(ev.predictions)
    return dict(zip(keys, per_image_cider(ev.predictions, ev.references).tolist()))


def bootstrap(scores: np.ndarray, n: int = 5000, seed: int = 0) -> list[float]:
    """95% interval of the mean over images resampled with replacement (paired when `scores` is
    a difference of two models on the same images)."""
    rng = np.random.default_rng(seed)
    means = scores[rng.integers(0, len(scores), (n, len(scores)))].mean(axis=1)
    return [float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))]


def throughput(trained, store, rows, beam_size: int, batch_size: int) -> float:
    """Images per second of decoding rows of a feature store (`caption_rows`, as `evaluate`)."""
    options = DecodingOptions(beam_size=beam_size)
    start = time.perf_counter()
    for i in range(0, len(rows), batch_size):
        caption_rows(trained, store, rows[i : i + batch_size], options, batch_size)
    return len(rows) / (time.perf_counter() - start)


def retrieval_baseline(dataset, store) -> dict[str, str]:
    """1-NN retrieval, the reference the first quality tables score in the same run: for each
    test image, the training image with the most similar pooled feature (cosine), and of its
    captions the one with the highest CIDEr-D against its other captions."""
    train, test = dataset.split("train"), dataset.split("test")
    feats = np.asarray(store.pooled, dtype=np.float32)
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    train_feats = feats[store.rows([dataset.path(r) for r in train])]
    test_feats = feats[store.rows([dataset.path(r) for r in test])]
    nearest = (test_feats @ train_feats.T).argmax(axis=1)
    refs = {r.filename: [" ".join(tokenize(c)) for c in r.captions] for r in train}
    cider = CiderD(refs)
    consensus = {}
    for r in train:
        caps = refs[r.filename]
        scores = cider.score(caps, [r.filename] * len(caps))  # against all five, self included
        consensus[r.filename] = r.captions[int(np.argmax(scores))]
    return {t.filename: consensus[train[i].filename] for t, i in zip(test, nearest)}


# --- variants of an experiment, as data ----------------------------------------------------------


def load_variants(name: str) -> dict[str, tuple[str, list[str]]]:
    """The variants of `bench/variants/NAME.yaml`: variant -> (what it changes, its `captionkit
    train` options). Each entry of the file is `VARIANT: {description: ..., options: [...]}`."""
    path = VARIANTS / f"{name}.yaml"
    entries = yaml.safe_load(path.read_text(encoding="utf-8"))
    out = {}
    for variant, entry in entries.items():
        if set(entry) != {"description", "options"}:
            raise ValueError(f"{path}: {variant} needs exactly `description` and `options`")
        out[str(variant)] = (str(entry["description"]), [str(o) for o in entry["options"]])
    return out


def train_variant(variants: dict, name: str, seed: int, data, out) -> Path:
    """Train one (variant, seed) into `OUT/VARIANT-sSEED` with `captionkit train`, unless that
    run folder already has a model; its wall time is kept in `bench_time.json` beside it."""
    run_dir = Path(out) / f"{name}-s{seed}"
    if (run_dir / "model.safetensors").exists():
        return run_dir
    argv = ["train", "--data", str(data), "--out", str(run_dir), "--seed", str(seed),
            *variants[name][1]]  # fmt: skip
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "captionkit", *argv], check=True)
    minutes = (time.perf_counter() - start) / 60
    (run_dir / "bench_time.json").write_text(json.dumps({"minutes": minutes, "argv": argv}))
    return run_dir


def run_scores(run_dir: Path, data) -> dict[str, dict[str, float]]:
    """Per-image val and test CIDEr-D of a run (plain beam 3), computed once and kept in
    `RUN/bench_scores.json`."""
    path = Path(run_dir) / "bench_scores.json"
    if not path.exists():
        scores = {split: split_scores(run_dir, data, split) for split in ("val", "test")}
        path.write_text(json.dumps(scores))
    return json.loads(path.read_text())


def make_folds(data: Path, out: Path, folds: int, seed: int = 0) -> list[Path]:
    """Cross-validation of the training split: one dataset folder per fold (a Karpathy JSON and a
    link to the images) with one `folds`-th of the training split as `val` (held out), the rest
    of it as `train`, the real val split as `test` (held out as well), and no test split: the
    real test images are never read."""
    data, out = Path(data), Path(out)
    (source,) = data.glob("dataset_*.json")
    dataset = json.loads(source.read_text())
    train = sorted(i["filename"] for i in dataset["images"] if i["split"] == "train")
    random.Random(seed).shuffle(train)
    size = len(train) // folds
    dirs = []
    for k in range(folds):
        held_out = set(train[k * size : (k + 1) * size])
        images = []
        for image in dataset["images"]:
            if image["split"] == "test":
                continue
            split = {"val": "test"}.get(image["split"], "train")
            images.append({**image, "split": "val" if image["filename"] in held_out else split})
        fold = out / f"data-fold{k}"
        fold.mkdir(parents=True, exist_ok=True)
        (fold / source.name).write_text(json.dumps({**dataset, "images": images}))
        if not (fold / "Images").exists():
            os.symlink((data / "Images").resolve(), fold / "Images")
        dirs.append(fold)
    return dirs


# --- timing training and extraction (bench_training.py, bench_extract.py, bench_gpu.py) ---------


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA), so that a clock read after it times that work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Counter:
    """Captions and target tokens of the batches after the warm-up, and the time they took.
    Tokens are summed on the device, so that counting does not wait for the GPU every step."""

    def __init__(self, warmup: int, batches: int, device: torch.device):
        self.warmup, self.last, self.device = warmup, warmup + batches, device
        self.seen, self.captions, self.tokens = 0, 0, torch.zeros((), device=device)
        self.start = self.end = 0.0

    def batch_done(self, tokens: torch.Tensor) -> None:
        self.seen += 1
        if self.seen > self.warmup:
            self.captions += tokens.shape[0]
            self.tokens += (tokens[:, 1:] != Vocabulary.pad_id).sum()
        if self.seen in (self.warmup, self.last):  # the clock starts and stops on idle devices
            sync(self.device)
            if self.seen == self.warmup:
                self.start = time.perf_counter()
            else:
                self.end = time.perf_counter()

    def result(self) -> dict:
        if self.seen < self.last:
            raise SystemExit(f"only {self.seen} batches in an epoch: lower --batches/--warmup")
        seconds = self.end - self.start
        return {"captions_s": self.captions / seconds, "tokens_s": int(self.tokens) / seconds,
                "batches": self.seen - self.warmup, "seconds": seconds}  # fmt: skip


class CountBatches(L.Callback):
    def __init__(self, counter: Counter):
        self.counter = counter

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self.counter.batch_done(batch["tokens"])


def engine_loop(model: nn.Module, datamodule, vocab, config: RunConfig, args, device,
                callbacks: tuple[L.Callback, ...] = ()) -> dict:  # fmt: skip
    """`CaptioningModule` + `CaptionDataModule` under a Lightning Trainer, as `train()` sets
    them up (precision, clipping, accumulation), validation and logging to disk off; `callbacks`
    watch the run besides the batch counter (bench_gpu.py's step clock)."""
    module = CaptioningModule(model, vocab, config.optim, {}, DecodingOptions(1))
    counter = Counter(args.warmup, args.batches, device)
    trainer = L.Trainer(
        max_epochs=1, limit_train_batches=args.warmup + args.batches, limit_val_batches=0,
        accelerator="gpu" if device.type == "cuda" else "cpu", devices=1,
        precision=config.train.precision, gradient_clip_val=config.optim.grad_clip or None,
        gradient_clip_algorithm=config.optim.grad_clip_algorithm,
        accumulate_grad_batches=config.optim.accumulate,
        callbacks=[CountBatches(counter), *callbacks],
        logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0,
    )  # fmt: skip
    trainer.fit(module, datamodule)
    return counter.result()


def forward_only(encoder, pixels: torch.Tensor, batch: int, channels_last: bool, device: str,
                 amp: str | None) -> float:  # fmt: skip
    layout = torch.channels_last if channels_last else torch.contiguous_format
    # the timm backbone itself: `ImageEncoder.forward` would make NCHW images channels_last
    model = encoder.model.to(device, memory_format=layout).forward_features
    x = pixels.to(device).contiguous(memory_format=layout)
    # the pipeline's precision: autocast, or float32 without TF32 on CUDA
    with torch.inference_mode(), precision(extraction_settings(device=device, amp=amp)):
        model(x[:batch])  # warm-up
        sync(torch.device(device))
        start = time.perf_counter()
        for i in range(0, len(x), batch):
            model(x[i : i + batch])
        sync(torch.device(device))
    encoder.to("cpu")
    return len(x) / (time.perf_counter() - start)
