"""Run folders: a trained model as `model.safetensors` + `config.json`, never a pickle; saving
one, and rebuilding its model (`load_checkpoint`) and its encoder (`encoder_for`).

`config.json` holds everything needed to rebuild and use the model: the model name and its config
dataclass, the encoder (name, weights, fingerprint; `"finetuned": true` when the run trained it,
its weights then in `encoder.safetensors`), the tokenizer (word vocabulary or BPE model, stored as
"vocabulary"), the training settings and the metrics. Every file is written to a temporary name
and renamed, so a crash during a save leaves the previous checkpoint intact.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from captionkit.data.files import write_atomically, write_json_atomically
from captionkit.data.tokenizers import Tokenizer, tokenizer_from_dict
from captionkit.encoders import ImageEncoder, create_encoder
from captionkit.encoders.factory import spec_resize
from captionkit.errors import CaptionkitError
from captionkit.models import create_model, model_config_dict, model_entry

WEIGHTS, CONFIG = "model.safetensors", "config.json"
ENCODER_WEIGHTS = "encoder.safetensors"  # only in runs that fine-tuned their encoder
FORMAT_VERSION = 1


@dataclass
class TrainedModel:
    """A model loaded from a run folder, with what it needs to caption images."""

    model: nn.Module
    tokenizer: Tokenizer
    """The caption tokenizer, word or BPE (stored under `"vocabulary"` in `config.json`)."""
    encoder: dict
    """`{"name", "weights", "fingerprint"}` of the encoder the model was trained on, and
    `"finetuned": true` when its weights are the run's `encoder.safetensors`."""
    config: dict
    """The whole `config.json`."""
    run_dir: Path | None = None
    """The run folder it was loaded from."""

    @property
    def vocab(self) -> Tokenizer:
        """The old name of `tokenizer`, from before BPE."""
        return self.tokenizer

    def data_setting(self, name: str, default=None):
        """A data setting the model was trained with (`DataConfig` field), e.g. `max_length`."""
        return self.config.get("run", {}).get("data", {}).get(name, default)


def save_checkpoint(
    run_dir: Path,
    model: nn.Module,
    model_name: str,
    tokenizer: Tokenizer,
    encoder: dict,
    extra: dict | None = None,
    encoder_model: nn.Module | None = None,
) -> None:
    """Write the model's weights and config into `run_dir`, atomically; a fine-tuned
    `encoder_model` (the timm backbone) goes into `encoder.safetensors`."""
    run_dir.mkdir(parents=True, exist_ok=True)
    config = {
        "format_version": FORMAT_VERSION,
        "model": {"name": model_name, "config": model_config_dict(model)},
        "encoder": encoder,
        "vocabulary": tokenizer.to_dict(),  # the key predates BPE; kept for existing runs
        **(extra or {}),
    }
    if encoder_model is not None:
        _save_weights(run_dir / ENCODER_WEIGHTS, encoder_model)
    _save_weights(run_dir / WEIGHTS, model)
    write_json_atomically(run_dir / CONFIG, config, indent=2)


def _save_weights(path: Path, model: nn.Module) -> None:
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    write_atomically(path, lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))


def read_config(run_dir: Path) -> dict:
    """The run's `config.json`, with a clear error when the folder is not a run."""
    path = Path(run_dir) / CONFIG
    if not Path(run_dir).is_dir():
        raise CaptionkitError(f"{run_dir}: checkpoint folder not found")
    if not path.is_file():
        raise CaptionkitError(f"{run_dir}: not a captionkit run folder (no {CONFIG})")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CaptionkitError(f"{path}: corrupt config ({e})") from None


def kept_label(row: dict) -> str:
    """What a run's kept val CIDEr is of, for people: "best val CIDEr (epoch N)", or "val CIDEr
    (the mean of epochs A-B)" for a mean of the last epochs' weights (the CLI and the report)."""
    if "epoch" not in row:
        return "best val CIDEr"
    first, last = kept_epochs(row)
    if first == last:
        return f"best val CIDEr (epoch {last})"
    return f"val CIDEr (the mean of epochs {first}-{last})"


def kept_epochs(row: dict) -> tuple[int, int]:
    """(first, last) epoch of the weights a validation row describes: one epoch, or the run's
    last epochs when it kept the mean of their weights (`averaged_epochs`, `--average-last`)."""
    last = int(row["epoch"])
    return last + 1 - int(row.get("averaged_epochs") or 1), last


def load_checkpoint(run_dir: str | Path, device: str | torch.device = "cpu") -> TrainedModel:
    """Rebuild the model of a run folder from safetensors weights and its JSON config. Run folders
    may come from anywhere: the config is checked, and the model it describes is compared with the
    weights file's tensor shapes, before anything is allocated."""
    run_dir = Path(run_dir)
    config = _checked_config(read_config(run_dir), run_dir / CONFIG)
    try:
        tokenizer = tokenizer_from_dict(config["vocabulary"])
        name, settings = config["model"]["name"], config["model"]["config"]
        with torch.device("meta"):
            meta_model = create_model(name, **settings)
        _check_shapes(run_dir, meta_model)
        model = create_model(name, **settings)
        state = load_file(run_dir / WEIGHTS, device=str(device))
        model.load_state_dict(state)
    except CaptionkitError as e:
        raise CaptionkitError(f"{run_dir}: {e}") from None
    except FileNotFoundError:
        raise CaptionkitError(f"{run_dir}: no {WEIGHTS} in the run folder") from None
    except (SafetensorError, OSError) as e:
        raise CaptionkitError(f"{run_dir / WEIGHTS}: unreadable weights ({e})") from None
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise CaptionkitError(f"{run_dir}: config and weights do not match ({e})") from None
    return TrainedModel(model.to(device).eval(), tokenizer, config["encoder"], config, run_dir)


MAX_SETTING = 1 << 24
"""No integer setting of a real model is larger: a bound on what a hostile config can ask for."""


def _checked_config(config, path: Path) -> dict:
    """`config.json`'s structure and bounds, checked before anything is built from it."""

    def need(ok: bool, what: str) -> None:
        if not ok:
            raise CaptionkitError(f"{path}: {what}")

    need(isinstance(config, dict), "not a run config (a JSON object)")
    model = config.get("model")
    need(
        isinstance(model, dict)
        and isinstance(model.get("config"), dict)
        and isinstance(model.get("name"), str),
        "'model' must hold a 'config' and a 'name'",
    )
    model_entry(model["name"], f"{path}: model.name")  # a registered one
    for key, value in model["config"].items():
        need(
            isinstance(value, (bool, int, float, str))
            and (
                isinstance(value, bool) or not isinstance(value, int) or -1 <= value <= MAX_SETTING
            ),
            f"model setting {key!r}: {str(value)[:40]} is not a setting",
        )
    encoder = config.get("encoder")
    need(
        isinstance(encoder, dict)
        and all(isinstance(encoder.get(k), str) for k in ("name", "weights", "fingerprint")),
        "'encoder' must give its name, weights and fingerprint",
    )
    need(isinstance(config.get("vocabulary"), dict), "'vocabulary' must be a mapping")
    return config


def _check_shapes(run_dir: Path, meta_model: nn.Module) -> None:
    """The weights file holds exactly the tensors of the model the config describes (built on
    the meta device: no memory): a config cannot make us allocate more than the file holds."""
    with safe_open(str(run_dir / WEIGHTS), framework="pt") as f:
        found = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118
    wanted = {k: tuple(v.shape) for k, v in meta_model.state_dict().items()}
    for key in sorted(found.keys() | wanted.keys()):
        if found.get(key) != wanted.get(key):
            shapes = f"{wanted.get(key)} in the config's model, {found.get(key)} in {WEIGHTS}"
            raise CaptionkitError(f"config and weights do not match ({key}: {shapes})")


def encoder_for(trained: TrainedModel) -> ImageEncoder:
    """Rebuild the encoder a model was trained on (a fine-tuned one from the run's
    `encoder.safetensors`), refusing one with other weights."""
    spec = trained.encoder
    weights = spec["weights"]
    if spec.get("finetuned"):
        weights = str(Path(trained.run_dir or ".") / ENCODER_WEIGHTS)
    encoder = create_encoder(spec["name"], weights, spec_resize(spec))
    if encoder.fingerprint() != spec["fingerprint"]:
        raise CaptionkitError(
            f"encoder {spec['name']} ({weights}) has other weights than in training"
        )
    return encoder
