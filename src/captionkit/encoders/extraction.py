"""How images are run through an encoder: batch size, workers, device, autocast and view
(`ExtractionSettings`), and true float32 on CUDA (`precision`)."""

from __future__ import annotations

import functools
import time
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from captionkit.encoders.views import View
from captionkit.errors import CaptionkitError

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class ExtractionSettings:
    """How images are run through the encoder. Only `amp` and `view` are part of the cache key
    (see `store_variant`): batch size, workers and device do not change what is stored."""

    batch_size: int = 32
    """Images per forward pass."""
    num_workers: int = 1
    """Decoding processes (0: decode in the main process)."""
    device: torch.device = torch.device("cpu")
    """Where the encoder runs; it is moved back to where it was afterwards."""
    amp: str | None = None
    """Autocast to "bf16" or "fp16"; None: float32 (also on CUDA, where TF32 is turned off)."""
    view: View | None = None
    """An augmented view of the images (`views.View`); None: the encoder's own preprocessing."""


def extraction_settings(
    batch_size: int = 32,
    num_workers: int = 1,
    device: str = "auto",
    amp: str | None = None,
    view: View | None = None,
) -> ExtractionSettings:
    """Check the user's `device` (auto, cpu, cuda, cuda:N) and `amp` (None, bf16, fp16)."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device != "cpu" and device.split(":")[0] != "cuda":
        raise CaptionkitError(f"--device {device}: expected auto, cpu, cuda or cuda:N")
    if device != "cpu" and not torch.cuda.is_available():
        raise CaptionkitError(f"--device {device}: no CUDA device is available")
    if amp not in (None, *AMP_DTYPES):
        raise CaptionkitError(f"--amp {amp}: expected none, bf16 or fp16")
    if amp == "fp16" and device == "cpu":
        raise CaptionkitError("--amp fp16 needs a CUDA device (use --amp bf16 on CPU)")
    return ExtractionSettings(batch_size, num_workers, torch.device(device), amp, view)


def native_bf16(device: torch.device | str = "cpu") -> bool:
    """Whether `device` computes bf16 natively: a CUDA GPU that does, a CPU with AVX512-BF16 or
    AMX. Elsewhere bf16 autocast is emulated and slower than float32."""
    if torch.device(device).type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:  # a torch without these probes: assume not
        return False


# bf16 autocast must be this much faster than float32 on a probe product to be chosen over it.
BF16_MIN_SPEEDUP = 1.2


def fast_bf16(device: torch.device | str = "cpu") -> bool:
    """Whether bf16 autocast runs faster than float32 on `device`, what the defaults that pick a
    precision ask (training's preset, `--quantize int8`'s encoder): a CUDA GPU that computes bf16;
    a CPU that computes it natively (`native_bf16`) and, measured once per process, multiplies
    a decoder-sized product `BF16_MIN_SPEEDUP` times faster under it. The flags alone do not
    say: with AVX512-BF16 but no AMX, one Xeon ran bf16 products at 0.6x its float32 speed and
    bf16-mixed training at 0.76x, where a 2-core EPYC trained 1.8x faster in bf16."""
    device = torch.device(device)
    if not native_bf16(device):
        return False
    return device.type == "cuda" or cpu_bf16_speedup() >= BF16_MIN_SPEEDUP


@functools.cache
def cpu_bf16_speedup() -> float:
    """float32 time / bf16-autocast time of a [256, 512] x [512, 2048] product on this CPU (the
    decoders' vocabulary projection and LSTM gates are of this shape), best of 3 x 5 products
    (about 0.1 s, once per process)."""
    generator = torch.Generator().manual_seed(0)
    x, w = torch.randn(256, 512, generator=generator), torch.randn(2048, 512, generator=generator)

    def best() -> float:
        torch.nn.functional.linear(x, w)  # warm-up: kernels chosen, weights cast
        times = []
        for _ in range(3):
            start = time.perf_counter()
            for _ in range(5):
                torch.nn.functional.linear(x, w)
            times.append(time.perf_counter() - start)
        return min(times)

    with torch.inference_mode():
        float32 = best()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return float32 / best()


@contextmanager
def precision(settings: ExtractionSettings):
    """Autocast when asked. Else true float32, also on CUDA, where cuDNN convolutions would use
    TF32 (10-bit mantissa) by default: float32 stores then agree across devices."""
    if settings.amp is not None:
        with torch.autocast(settings.device.type, AMP_DTYPES[settings.amp]):
            yield
        return
    if settings.device.type != "cuda":
        yield
        return
    saved = torch.backends.cudnn.allow_tf32, torch.get_float32_matmul_precision()
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32 = saved[0]
        torch.set_float32_matmul_precision(saved[1])
