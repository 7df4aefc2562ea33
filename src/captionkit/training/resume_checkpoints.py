"""Training-state checkpoints (`checkpoints/last.safetensors`, `checkpoints/best.safetensors`),
one safetensors file each, never a pickle.

Lightning's checkpoint is a nested dict: weights, optimizer and scheduler states, loop counters,
callback states. `SafetensorsCheckpointIO` keeps its tensors as the file's tensors and the rest as a
tagged JSON tree in the file's metadata (`__tensor__`, `__tuple__`, `__items__` for dicts whose keys
are not all text, such as an optimizer's per-parameter state). Loading rebuilds exactly those
types, so a checkpoint file can hold no code. Each file is written to a temporary name and renamed:
a crash during a save leaves the previous checkpoint whole.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.fabric.plugins import CheckpointIO
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from captionkit.data.files import write_atomically
from captionkit.errors import CaptionkitError

STATE_KEY = "captionkit_training_state"
CHECKPOINTS = "checkpoints"  # the folder in a run folder
LAST, BEST = "last.safetensors", "best.safetensors"


def _encode(value: Any, tensors: dict[str, torch.Tensor], where: str):
    """`value` as JSON-able data, its tensors moved into `tensors` (`where`: for errors)."""
    if isinstance(value, torch.Tensor):
        name = f"t{len(tensors)}"
        # clone: safetensors refuses tensors that share memory (e.g. tied weights).
        tensors[name] = value.detach().cpu().contiguous().clone()
        return {"__tensor__": name}
    if isinstance(value, np.ndarray):
        return {"__ndarray__": _encode(torch.from_numpy(value.copy()), tensors, where)}
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, tuple):
        return {"__tuple__": [_encode(v, tensors, f"{where}[{i}]") for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [_encode(v, tensors, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in value):
            return {k: _encode(v, tensors, f"{where}[{k!r}]") for k, v in value.items()}
        return {
            "__items__": [
                [_encode(k, tensors, where), _encode(v, tensors, f"{where}[{k!r}]")]
                for k, v in value.items()
            ]
        }
    raise CaptionkitError(
        f"cannot store a {type(value).__name__} at checkpoint{where} "
        "(training checkpoints hold tensors, numbers, text, lists and dicts only)"
    )


def _decode(value: Any, tensors: dict[str, torch.Tensor]):
    if isinstance(value, list):
        return [_decode(v, tensors) for v in value]
    if not isinstance(value, dict):
        return value
    if "__tensor__" in value:
        return tensors[value["__tensor__"]]
    if "__ndarray__" in value:
        return _decode(value["__ndarray__"], tensors).numpy()
    if "__tuple__" in value:
        return tuple(_decode(v, tensors) for v in value["__tuple__"])
    if "__items__" in value:
        return {_decode(k, tensors): _decode(v, tensors) for k, v in value["__items__"]}
    return {k: _decode(v, tensors) for k, v in value.items()}


def save_state(state: dict, path: str | Path) -> None:
    """Write a training state (Lightning's checkpoint dict) to `path`, atomically."""
    path = Path(path)
    tensors: dict[str, torch.Tensor] = {}
    tree = json.dumps(_encode(state, tensors, ""))
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, lambda tmp: save_file(tensors, tmp, metadata={STATE_KEY: tree}))


def load_state(path: str | Path) -> dict:
    """Read a training state written by `save_state`; a missing, damaged or foreign file is an
    error naming it."""
    path = Path(path)
    if not path.is_file():
        raise CaptionkitError(f"{path}: no such training checkpoint")
    try:
        with safe_open(str(path), framework="pt") as f:
            tree = (f.metadata() or {}).get(STATE_KEY)
            if tree is None:
                raise CaptionkitError(f"{path}: not a captionkit training checkpoint")
            tensors = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118
        return _decode(json.loads(tree), tensors)
    except (SafetensorError, OSError, ValueError, KeyError, TypeError) as e:
        raise CaptionkitError(f"{path}: damaged training checkpoint ({e!r})") from None


class SafetensorsCheckpointIO(CheckpointIO):
    """Lightning's checkpoint reader/writer (`Trainer(plugins=[...])`) over `save_state` and
    `load_state`: `trainer.save_checkpoint` and `fit(ckpt_path=...)` then use safetensors files."""

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        save_state(checkpoint, path)

    def load_checkpoint(self, path, map_location=None, weights_only=None) -> dict:
        return load_state(path)

    def remove_checkpoint(self, path) -> None:
        Path(path).unlink(missing_ok=True)
