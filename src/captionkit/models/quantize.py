"""Faster CPU inference of a trained run: `none`, `int8` or `bf16` (`QUANTIZE`).

- `int8`: the decoder's Linear, LSTM and GRU layers quantized dynamically (torch.ao): int8
  weights (one scale per output row of a Linear), activations quantized per batch on the fly,
  float32 everywhere else. Linear layers with fewer than `FEW_OUTPUTS` outputs stay float32: an
  attention's score w · tanh(...) reads every region of every beam row, and quantizing that
  input on the fly costs more than the int8 product saves (int8 decoding is 1.2x faster so).
  Convolutions have no dynamic int8 kernels, so the encoder runs under bf16 autocast where that
  is faster than float32 (`fast_bf16`), else in float32.
- `bf16`: the weights unchanged, encoder and decoder run under bf16 autocast (refused where bf16
  is not native: emulated, it is slower than float32).

Both change the numbers a little, and so now and then a word of a caption (BENCHMARKS.md "CPU
inference" says by how much on val and test). Training and the weights on disk are untouched.
"""

from __future__ import annotations

import contextlib
import warnings

import torch
from torch import nn

from captionkit.encoders.extraction import fast_bf16, native_bf16
from captionkit.errors import CaptionkitError

QUANTIZE = ("none", "int8", "bf16")
# The layers dynamic quantization replaces; every decoder's step calls them as modules.
DYNAMIC_LAYERS = {nn.Linear, nn.LSTM, nn.LSTMCell, nn.GRU, nn.GRUCell}
FEW_OUTPUTS = 16


def check_quantize(mode: str, device: torch.device | str = "cpu") -> str:
    """`mode` if this machine can run it, else an error saying why."""
    if mode not in QUANTIZE:
        raise CaptionkitError(f"--quantize {mode}: expected {', '.join(QUANTIZE)}")
    device = torch.device(device)
    if mode == "int8" and device.type != "cpu":
        raise CaptionkitError("--quantize int8 runs on the CPU (--device cpu); on a GPU use bf16")
    if mode == "bf16" and not native_bf16(device):
        raise CaptionkitError(
            f"--quantize bf16: this {device.type.upper()} has no native bf16 "
            "(AVX512-BF16 or AMX), where it is slower than float32; use "
            "--quantize int8"
        )
    return mode


def quantize_decoder(model: nn.Module, mode: str) -> nn.Module:
    """The decoder to run for `mode`: a dynamically quantized copy for `int8`, else itself."""
    if mode != "int8":
        return model
    with warnings.catch_warnings():
        # torch.ao's eager quantization is marked deprecated in favour of torchao, but it is the
        # CPU path with fused int8 LSTM kernels in this torch: not the user's business.
        warnings.filterwarnings("ignore", message=r"torch\.ao\.quantization is deprecated")
        warnings.filterwarnings("ignore", message=r"torch\.quantize_per_tensor")
        return torch.ao.quantization.quantize_dynamic(model, _layers(model), dtype=torch.qint8)


def _layers(model: nn.Module) -> dict:
    """quantize_dynamic's spec: which layers of `model` become int8, and how (a name mapped to
    None stays float32)."""
    from torch.ao.quantization import default_dynamic_qconfig, per_channel_dynamic_qconfig

    spec = {layer: default_dynamic_qconfig for layer in DYNAMIC_LAYERS}
    spec[nn.Linear] = per_channel_dynamic_qconfig  # captions closer to float32's, same speed
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    return spec | {n: None for n, m in linears if m.out_features < FEW_OUTPUTS}


def _bf16(device: torch.device | str):
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)


def encoder_amp(mode: str, device: torch.device | str = "cpu") -> str | None:
    """The autocast the encoder runs under for `mode`: "bf16" for `bf16` where it is native, and
    for `int8` where bf16 is faster than float32 here, else None (float32); as `extract --amp`
    names it, so cached features can match."""
    if (mode == "bf16" and native_bf16(device)) or (mode == "int8" and fast_bf16(device)):
        return "bf16"
    return None


def encoder_precision(mode: str, device: torch.device | str = "cpu"):
    """The context the encoder runs in for `mode` (`encoder_amp`)."""
    return _bf16(device) if encoder_amp(mode, device) else contextlib.nullcontext()


def decoder_precision(mode: str, device: torch.device | str = "cpu"):
    """The context the decoder runs in for `mode` (int8 layers take float32 inputs)."""
    return _bf16(device) if mode == "bf16" else contextlib.nullcontext()
