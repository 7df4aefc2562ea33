"""Captioning with an exported run (`captionkit export`): ONNX Runtime or TorchScript computes
the network, the library's own greedy and beam search drive it."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import timm.data
import torch
from torch import nn

from captionkit.data.tokenizers import tokenizer_from_dict
from captionkit.errors import CaptionkitError
from captionkit.evaluation.captioner import Captioner
from captionkit.models.run_folder import TrainedModel
from captionkit.models.step import StepModel, StepOutput


class _Preprocess(nn.Module):
    """The encoder's stand-in for `Captioner`: the exported encoder graph starts from pixels, so
    the "pooled features" it hands to decoding are the pixels themselves [B, 3, H, W]."""

    def __init__(self, data_config: dict, name: str):
        super().__init__()
        self.data_config, self.name = data_config, name

    def transform(self):
        config = {k: tuple(v) if isinstance(v, list) else v for k, v in self.data_config.items()}
        return timm.data.create_transform(**config)

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, None]:
        return pixels, None

    def for_inference(self) -> _Preprocess:
        return self  # the exported graph is already folded by ONNX Runtime


class _ExportedModel(StepModel):
    """The model interface `decode` uses (`init_state`, `step`, `eval`/`train`) over exported
    graphs; `init_state` runs the encoder graph on the pixels. It says no `image_state`: the
    graphs' state names carry no such promise, so beam search reorders all of it."""

    training = False

    def __init__(self, encode, step, names: list[str], attends: bool):
        self.encode, self.step_graph, self.names = encode, step, names
        self.attends = attends  # then the step graph returns the attention after the logits

    def eval(self):
        return self

    def train(self, mode: bool = True):
        return self

    def init_state(self, pixels: torch.Tensor, grid=None) -> dict[str, torch.Tensor]:
        return dict(zip(self.names, self.encode(pixels)))

    def step(self, tokens: torch.Tensor, state: dict[str, torch.Tensor]) -> StepOutput:
        logits, *new = self.step_graph(tokens, *(state[n] for n in self.names))
        attention = new.pop(0) if self.attends else None
        return StepOutput(logits, dict(zip(self.names, new)), attention)


def _onnx_graphs(folder: Path, files: dict, names: list[str]):
    import onnxruntime as ort

    def session(name):
        path = folder / files[name]
        if not path.is_file():
            raise CaptionkitError(f"{path}: exported graph not found")
        return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    encoder, step = session("encoder"), session("step")
    # ONNX drops inputs a graph does not read.
    step_inputs = {i.name for i in step.get_inputs()}

    def encode(pixels: torch.Tensor):
        return [torch.from_numpy(a) for a in encoder.run(names, {"pixels": pixels.numpy()})]

    def run_step(tokens: torch.Tensor, *state: torch.Tensor):
        feed = {n: s.numpy() for n, s in zip(names, state) if n in step_inputs}
        feed["tokens"] = tokens.numpy()
        return [torch.from_numpy(np.asarray(a)) for a in step.run(None, feed)]

    return encode, run_step


def load_exported(manifest: str | Path) -> Captioner:
    """A `Captioner` over the graphs `captionkit export` wrote (give its STEM.json): same
    `caption` API, same search, ONNX Runtime or TorchScript doing the network's work (CPU)."""
    manifest = Path(manifest)
    try:
        spec = json.loads(manifest.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CaptionkitError(f"{manifest}: not an export manifest ({e})") from None
    names, config = spec["state"], spec["config"]
    if spec["format"] == "onnx":
        encode, step = _onnx_graphs(manifest.parent, spec["files"], names)
    else:
        with warnings.catch_warnings():  # TorchScript is deprecated, still the lighter runtime
            warnings.simplefilter("ignore", FutureWarning)
            module = torch.jit.load(str(manifest.parent / spec["files"]["module"]), "cpu")
        encode, step = module.encode, module.step
    model = _ExportedModel(encode, step, names, spec.get("attends", False))
    trained = TrainedModel(
        model, tokenizer_from_dict(config["vocabulary"]), config["encoder"], config
    )
    return Captioner(trained, _Preprocess(spec["data_config"], config["encoder"]["name"]))
