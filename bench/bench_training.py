"""Benchmark: decoder training throughput on cached features, engine against plain PyTorch.

    .venv/bin/python bench/bench_training.py --data ../shared/data/flickr8k-mini

Per model (the model settings of configs/flickr8k-mini/NAME.yaml), on the train split's cached
EfficientNet-Lite0 features, in the same run and over the same batches (the engine's own
`CaptionDataModule`, its sampler and dataset objects):
- `engine`: `CaptioningModule` run by a Lightning Trainer as `captionkit train` builds it, with
  validation off;
- `plain`: a PyTorch loop over the same model, batches, loss (`caption_loss` + the model's
  regulariser), Adam and gradient clipping -> the engine's overhead in %;
- `naive`: tutorial-style reference decoders (Show-and-Tell, attention; not the Transformer):
  an `nn.LSTMCell` stepped in Python over the whole padded length, the attention recomputing
  the grid projection at every step, as naive tutorial code does;
- the FLOPs of one training step (forward + backward: `FlopCounterMode`'s matrix products, and
  nn.LSTM/nn.GRU counted by hand as it misses their fused kernels) and the FLOP/s achieved by
  `plain`, as a fraction of the machine's fp32 matmul peak measured here with a large GEMM.

Throughputs: captions/s, target tokens/s (non-pad target tokens, <eos> included) and images/s =
captions/s divided by the mean captions per training image (each image is seen once per caption).
Every loop is timed after `--warmup` batches; engine and plain take turns for `--repeats`
passes each and report their median pass; the naive loops run once.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from common import (
    CONFIGS,
    Counter,
    common_options,
    engine_loop,
    machine,
    set_threads,
    sync,
    write_results,
)
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from captionkit.data import load_dataset
from captionkit.data.tokenizers import build_tokenizer
from captionkit.encoders import create_encoder
from captionkit.encoders.features import features_for_dataset
from captionkit.models import MODELS, create_model
from captionkit.models.attention import attention_regularizer
from captionkit.training.config import RunConfig
from captionkit.training.module import caption_loss, feature_arguments
from captionkit.training.run_data import caption_datamodule


def matmul_peak(device: torch.device, n: int, repeats: int = 5) -> float:
    """FLOP/s of an fp32 n x n GEMM (best of `repeats`): the machine's practical peak."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    a @ b  # warm-up
    best = float("inf")
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v
            for k, v in batch.items()}  # fmt: skip


def training_loss(model: nn.Module, batch: dict) -> torch.Tensor:
    """The engine's loss (`CaptioningModule.training_step`): cross-entropy, plus the doubly
    stochastic regulariser over the attention weights for models that attend with α_c > 0."""
    tokens = batch["tokens"]
    inputs = tokens[:, :-1]  # [B, T-1]
    regularized = getattr(model, "attends", False) and model.config.alpha_c > 0
    features, options = feature_arguments(model, batch["pooled"], batch["grid"],
                                          batch.get("image_index"))  # fmt: skip
    out = model(*features, inputs, **options, **({"return_attention": True} if regularized else {}))
    loss = caption_loss(out[0] if regularized else out, tokens[:, 1:])
    if regularized:  # out[1]: α [B, T-1, L]
        loss = loss + attention_regularizer(out[1], inputs, model.config.alpha_c)
    return loss


def train_step(model: nn.Module, batch: dict, optimizer, grad_clip: float) -> torch.Tensor:
    """The engine's step without the engine: loss, backward, clipping (norm), Adam."""
    loss = training_loss(model, batch)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    return loss


def plain_loop(model: nn.Module, loader, config: RunConfig, args, device) -> dict:
    """The same batches, loss, optimizer and clipping as the engine, in a bare PyTorch loop."""
    model.train().to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.optim.lr,
                                 weight_decay=config.optim.weight_decay)  # fmt: skip
    counter = Counter(args.warmup, args.batches, device)
    loader.batch_sampler.set_epoch(0)  # what Lightning does: the engine's batches, in its order
    for i, batch in enumerate(loader):
        if i == args.warmup + args.batches:
            break
        batch = to_device(batch, device)
        train_step(model, batch, optimizer, config.optim.grad_clip)
        counter.batch_done(batch["tokens"])
    return counter.result()


def rnn_flops(module: nn.RNNBase, inputs: tuple, calls: list[int]) -> None:
    """Forward hook: FLOPs of a whole nn.LSTM / nn.GRU call, forward + backward (x3), which
    FlopCounterMode misses (fused kernels: oneDNN, cuDNN)."""
    x = inputs[0]
    steps = int(x.batch_sizes.sum()) if hasattr(x, "batch_sizes") else x.shape[0] * x.shape[1]
    gates = {"LSTM": 4, "GRU": 3}.get(module.mode, 1) * module.hidden_size
    size = module.input_size
    for _ in range(module.num_layers):
        calls.append(3 * 2 * steps * gates * (size + module.hidden_size))
        size = module.hidden_size


def step_flops(model: nn.Module, batch: dict) -> int:
    """FLOPs (matrix products, recurrent layers included) of one forward + backward of `batch`."""
    model.train()
    rnn_calls: list[int] = []
    hooks = [m.register_forward_hook(lambda m, i, o: rnn_flops(m, i, rnn_calls))
             for m in model.modules() if isinstance(m, nn.RNNBase)]  # fmt: skip
    with FlopCounterMode(display=False) as counter:
        training_loss(model, batch).backward()
    for hook in hooks:
        hook.remove()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops() + sum(rnn_calls)


def alternating(runs: dict, repeats: int) -> dict:
    """Each run `repeats` times, taking turns (so that a busy spell on a shared machine hits
    all of them alike); per run, the pass of median captions/s, with every pass's figure."""
    passes: dict[str, list[dict]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            passes[name].append(run())
    out = {}
    for name, results in passes.items():
        speeds = [p["captions_s"] for p in results]
        median = sorted(results, key=lambda p: p["captions_s"])[(len(results) - 1) // 2]
        out[name] = median | {"passes_captions_s": speeds}
    return out


def bench_model(name: str, data: dict, args, device: torch.device) -> dict:
    from naive_decoders import naive_model

    config = RunConfig.from_yaml(CONFIGS / f"{name}.yaml")
    config.train.precision = args.precision or config.train.precision
    config.train.bucket_batches = args.bucket_batches or config.train.bucket_batches
    config.train.group_images = args.group_images
    use_grid = MODELS[name].model_class.uses_grid
    with tempfile.TemporaryDirectory() as tmp:
        # No encoder: the configs have no feature views, which are all it would extract.
        datamodule, _ = caption_datamodule(config, None, data["store"], data["dataset"],
                                           data["train"], data["val"], data["vocab"], use_grid,
                                           Path(tmp))  # fmt: skip
    loader = datamodule.train_dataloader()
    torch.manual_seed(config.train.seed)
    model = create_model(name, vocab_size=len(data["vocab"]), feature_dim=data["feature_dim"],
                         **config.model_args)  # fmt: skip
    initial = {k: v.clone() for k, v in model.state_dict().items()}

    def fresh() -> nn.Module:
        model.load_state_dict(initial)
        return model

    out = {"model_args": config.model_args, "batch_size": config.train.batch_size}
    out |= alternating({
        "plain": lambda: plain_loop(fresh(), loader, config, args, device),
        "engine": lambda: engine_loop(fresh(), datamodule, data["vocab"], config, args, device),
    }, args.repeats)  # fmt: skip
    ratio = out["plain"]["captions_s"] / out["engine"]["captions_s"]
    out["engine_overhead_pct"] = 100 * (ratio - 1)
    naive = naive_model(name, fresh())
    if naive is not None and not args.no_naive and not args.group_images:
        out["naive"] = plain_loop(naive, loader, config, args, device)
        out["speedup_over_naive"] = out["engine"]["captions_s"] / out["naive"]["captions_s"]
    batch = to_device(next(iter(loader)), device)
    flops = step_flops(fresh().to(device), batch)
    out["step_gflop"] = flops / 1e9
    out["captions_per_step"] = batch["tokens"].shape[0]
    achieved = flops / batch["tokens"].shape[0] * out["plain"]["captions_s"]
    out["plain_gflop_s"] = achieved / 1e9
    out["fraction_of_peak"] = achieved / data["peak_flop_s"]
    return out


def load(args, device: torch.device) -> dict:
    dataset = load_dataset(args.data)
    encoder = create_encoder()
    store, records = features_for_dataset(dataset, encoder)
    train = [r for r in records if r.split == "train"]
    val = [r for r in records if r.split == "val"]
    config = RunConfig.from_yaml(CONFIGS / "show_tell.yaml")  # all three share the data settings
    vocab = build_tokenizer(config.data.tokenizer, (c for r in train for c in r.captions),
                            config.data.min_count, config.data.vocab_size)  # fmt: skip
    per_image = sum(len(r.captions) for r in train) / len(train)
    peak = matmul_peak(device, 4096 if device.type == "cuda" else 2048)
    return {"dataset": dataset, "store": store, "train": train, "val": val, "vocab": vocab,
            "feature_dim": encoder.feature_dim, "captions_per_image": per_image,
            "peak_flop_s": peak}  # fmt: skip


def table(results: dict, per_image: float) -> str:
    lines = [
        f"{'model':<12} {'loop':<7} {'captions/s':>10} {'tokens/s':>9} {'images/s':>9} "
        f"{'engine overhead':>15} {'vs naive':>8} {'GFLOP/step':>10} {'% of peak':>9}"
    ]
    for name, r in results["models"].items():
        for loop in ("engine", "plain", "naive"):
            if loop not in r:
                continue
            x = r[loop]
            extra = ["", "", "", ""]
            if loop == "engine":
                extra[0] = f"{r['engine_overhead_pct']:+.1f}%"
                extra[1] = f"{r['speedup_over_naive']:.1f}x" if "naive" in r else "-"
            if loop == "plain":
                extra[2] = f"{r['step_gflop']:.1f}"
                extra[3] = f"{100 * r['fraction_of_peak']:.1f}%"
            lines.append(
                f"{name:<12} {loop:<7} {x['captions_s']:>10.1f} {x['tokens_s']:>9.0f} "
                f"{x['captions_s'] / per_image:>9.1f} {extra[0]:>15} {extra[1]:>8} "
                f"{extra[2]:>10} {extra[3]:>9}"
            )
    lines.append(f"images/s = captions/s / {per_image:g} captions per training image; tokens = "
                 f"non-pad target tokens; peak = {results['peak_gflop_s']:.0f} GFLOP/s "
                 "(fp32 GEMM); % of peak is the plain loop's matmul FLOP/s.")  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        parents=[common_options(output="training.json", threads=True)],
    )
    parser.add_argument("--models", default="show_tell,attention,transformer")
    parser.add_argument("--batches", type=int, default=30, help="Timed batches per loop.")
    parser.add_argument("--warmup", type=int, default=3, help="Untimed batches first.")
    parser.add_argument("--repeats", type=int, default=1, help="Passes of engine and plain.")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--precision", default=None, help="Override the configs' precision.")
    parser.add_argument(
        "--bucket-batches",
        type=int,
        default=None,
        help="Override train.bucket_batches (length bucketing; configs: 1).",
    )
    parser.add_argument(
        "--group-images",
        action="store_true",
        help="train.group_images: batches of whole images (naive loops skipped).",
    )
    parser.add_argument("--no-naive", action="store_true", help="Skip the naive reference loops.")
    parser.add_argument("--quick", action="store_true", help="Smoke test: 2+2 batches.")
    args = parser.parse_args()
    if args.quick:
        args.batches, args.warmup, args.repeats = 2, 1, 1
    args.warmup = max(1, args.warmup)  # the first batch pays for setup, whatever the loop
    set_threads(args.threads)
    auto = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(auto if args.device == "auto" else args.device)
    data = load(args, device)
    results = {
        "machine": machine(),
        "device": str(device), "data": args.data, "batches": args.batches,
        "warmup": args.warmup, "repeats": args.repeats,
        "captions_per_image": data["captions_per_image"],
        "peak_gflop_s": data["peak_flop_s"] / 1e9,
    }  # fmt: skip
    results["models"] = {}
    for name in args.models.split(","):
        results["models"][name] = bench_model(name, data, args, device)
        print(f"{name}: {json.dumps(results['models'][name])}", flush=True)
    write_results(args.output, results)
    print(json.dumps(results["machine"]))
    print(table(results, data["captions_per_image"]))


if __name__ == "__main__":
    main()
