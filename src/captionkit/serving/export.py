"""`captionkit export`: a run as two graphs, ONNX or TorchScript, and a runner that captions with
them.

- the encoder graph: pixels [B, 3, H, W] -> the decoder's initial state (the image encoder and
  the model's `init_state` in one graph);
- the step graph: (tokens [B], *state) -> (logits [B, V], *new state), the model's `step`;
  for models that attend, (logits, attention [B, L], *new state).

Beside them a JSON manifest (`STEM.json`) names the state tensors in order and keeps the
vocabulary, the preprocessing and the length limit. `load_exported(manifest)` wraps the graphs in
a `Captioner`, so greedy decoding and beam search run the library's own search over ONNX Runtime
(or TorchScript) outputs: its captions can be compared with the PyTorch ones one for one.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
from torch import nn

from captionkit.errors import CaptionkitError
from captionkit.evaluation.captioner import Captioner

EXPORT_FORMATS = {"onnx": ".onnx", "torchscript": ".pt"}
MANIFEST_VERSION = 1


class _EncodeGraph(nn.Module):
    def __init__(self, encoder: nn.Module, model: nn.Module, names: list[str]):
        super().__init__()
        self.encoder, self.model, self.names = encoder, model, names

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, ...]:
        pooled, grid = self.encoder(pixels)  # [B, D], [B, L, D]
        state = self.model.init_state(pooled, grid)  # as `decode` calls it
        return tuple(state[n] for n in self.names)


class _StepGraph(nn.Module):
    def __init__(self, model: nn.Module, names: list[str]):
        super().__init__()
        self.model, self.names = model, names

    def forward(self, tokens: torch.Tensor, *state: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.model.step(tokens, dict(zip(self.names, state)))
        attention = (out.attention,) if self.model.attends else ()
        return (out.logits, *attention, *(out.state[n] for n in self.names))


def export_run(
    run_dir: str | Path, fmt: str, out: str | Path, quantize: str = "none"
) -> list[Path]:
    """Export the run in `run_dir` as `fmt` (onnx | torchscript); `out` names the files:
    STEM.encoder.onnx + STEM.step.onnx (or STEM.pt, both graphs in one TorchScript module)
    and STEM.json. `quantize` `int8` (ONNX): the graphs' matrix products with int8 weights,
    quantized by ONNX Runtime. Returns the files written."""
    if fmt not in EXPORT_FORMATS:
        raise CaptionkitError(f"--format must be one of {', '.join(EXPORT_FORMATS)}, not {fmt!r}")
    if quantize not in ("none", "int8") or (quantize == "int8" and fmt != "onnx"):
        raise CaptionkitError(
            f"--quantize {quantize}: export quantizes ONNX graphs to int8 "
            "(--format onnx --quantize int8), or none"
        )
    captioner = Captioner.load(run_dir)
    model, encoder = captioner.trained.model.eval(), captioner.encoder.eval()
    stem = Path(out).with_suffix("") if Path(out).suffix in (".onnx", ".pt", ".json") else Path(out)
    stem.parent.mkdir(parents=True, exist_ok=True)
    size = encoder.data_config["input_size"]
    pixels = torch.randn(2, *size)  # [2, 3, H, W]: a batch of 2, so the batch axis stays free
    with torch.no_grad():
        pooled, grid = encoder(pixels)
        state0 = model.init_state(pooled, grid)
        names = list(state0)
        tokens = torch.full((2,), 4, dtype=torch.long)  # the step after <bos>: caches not empty
        state1 = model.step(tokens, state0).state
    # Axes that grow from step to step (a Transformer's caches) are dynamic beside the batch.
    growing = {
        n: [d for d in range(state0[n].dim()) if state0[n].shape[d] != state1[n].shape[d]]
        for n in names
    }
    encode, step = _EncodeGraph(encoder, model, names), _StepGraph(model, names)
    with warnings.catch_warnings():  # tracer warnings about Python branches on fixed shapes
        warnings.simplefilter("ignore")
        if fmt == "onnx":
            files = _export_onnx(encode, step, stem, pixels, tokens, state1, names, growing)
            if quantize == "int8":
                _quantize_onnx(files.values())
        else:
            files = _export_torchscript(encode, step, stem, pixels, tokens, state1, names)
    manifest = {
        "format": fmt,
        "version": MANIFEST_VERSION,
        "state": names,
        "attends": model.attends,
        "quantize": quantize,
        "files": {k: f.name for k, f in files.items()},
        "config": captioner.trained.config,
        "source": str(run_dir),
        "data_config": encoder.data_config,
    }
    stem.with_suffix(".json").write_text(json.dumps(manifest, indent=1, default=list) + "\n")
    return [*files.values(), stem.with_suffix(".json")]


def _export_onnx(encode, step, stem: Path, pixels, tokens, state, names, growing) -> dict:
    files = {"encoder": Path(f"{stem}.encoder.onnx"), "step": Path(f"{stem}.step.onnx")}
    batch = {0: "batch"}
    state_axes = {n: {**batch, **{d: f"{n}_len" for d in growing[n]}} for n in names}
    torch.onnx.export(
        encode,
        (pixels,),
        files["encoder"],
        dynamo=False,
        opset_version=17,
        input_names=["pixels"],
        output_names=names,
        dynamic_axes={"pixels": batch, **state_axes},
    )
    attention = ["attention"] if step.model.attends else []  # [B, L] after the logits
    outputs = {
        "logits": batch,
        **dict.fromkeys(attention, batch),
        **{f"new.{n}": state_axes[n] for n in names},
    }
    torch.onnx.export(
        step,
        (tokens, *(state[n] for n in names)),
        files["step"],
        dynamo=False,
        opset_version=17,
        input_names=["tokens", *names],
        output_names=list(outputs),
        dynamic_axes={"tokens": batch, **state_axes, **outputs},
    )
    return files


def _quantize_onnx(files) -> None:
    """Each graph's MatMul and Gemm with int8 weights and dynamically quantized inputs, in
    place (ONNX Runtime's dynamic quantization; convolutions stay float32: its integer
    convolutions are slower on CPUs than float32 ones)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    for path in files:
        quantized = path.with_suffix(".int8.onnx")
        quantize_dynamic(
            path, quantized, weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Gemm"]
        )
        quantized.replace(path)


def _export_torchscript(encode, step, stem: Path, pixels, tokens, state, names) -> dict:
    traced = torch.jit.trace_module(
        _Both(encode, step),
        {"encode": (pixels,), "step": (tokens, *(state[n] for n in names))},
        check_trace=False,  # the parity test checks the captions instead
    )
    path = Path(f"{stem}.pt")
    traced.save(str(path))
    return {"module": path}


class _Both(nn.Module):
    """Both graphs as the methods of one module, for one TorchScript file."""

    def __init__(self, encode: nn.Module, step: nn.Module):
        super().__init__()
        self.encode_graph, self.step_graph = encode, step

    def encode(self, pixels: torch.Tensor):
        return self.encode_graph(pixels)

    def step(self, tokens: torch.Tensor, *state: torch.Tensor):
        return self.step_graph(tokens, *state)
