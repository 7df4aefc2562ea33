"""Run folders: safetensors + JSON round trip, and clear errors for bad ones."""

import json
from pathlib import Path

import pytest
import torch

from captionkit.data import Vocabulary
from captionkit.errors import CaptionkitError
from captionkit.models import create_model
from captionkit.models.run_folder import load_checkpoint, save_checkpoint

ENCODER = {"name": "tf_efficientnet_lite0", "weights": "default", "fingerprint": "abc"}


@pytest.fixture
def run_dir(tmp_path):
    torch.manual_seed(0)
    vocab = Vocabulary.build(["a dog runs", "a cat sits"])
    model = create_model("show_tell", vocab_size=len(vocab), feature_dim=16, hidden_dim=32,
                         rnn="gru")  # fmt: skip
    save_checkpoint(tmp_path, model, "show_tell", vocab, ENCODER, {"metrics": {"val/CIDEr": 0.5}})
    return tmp_path, model, vocab


def test_round_trip_gives_the_same_model(run_dir):
    path, model, vocab = run_dir
    loaded = load_checkpoint(path)
    assert loaded.vocab.itos == vocab.itos and loaded.encoder == ENCODER
    assert loaded.config["metrics"]["val/CIDEr"] == 0.5
    assert loaded.model.config == model.config
    pooled, tokens = torch.randn(2, 16), torch.tensor([[1, 4, 5], [1, 6, 7]])
    model.eval()
    assert torch.equal(loaded.model(pooled, None, tokens), model(pooled, None, tokens))
    assert sorted(p.name for p in path.iterdir()) == ["config.json", "model.safetensors"]


def test_weights_file_is_safetensors_not_a_pickle(run_dir):
    path, *_ = run_dir
    header_len = int.from_bytes((path / "model.safetensors").read_bytes()[:8], "little")
    header = json.loads((path / "model.safetensors").read_bytes()[8 : 8 + header_len])
    assert "image_proj.0.weight" in header and "embed.weight" in header


def _truncate(path: Path) -> None:
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size // 2)


def _edit_config(run: Path, *keys: str, value) -> None:
    config = json.loads((run / "config.json").read_text())
    node = config
    for key in keys[:-1]:
        node = node[key]
    node[keys[-1]] = value
    (run / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda p: (p / "config.json").unlink(), "not a captionkit run folder"),
        (lambda p: (p / "config.json").write_text("{oops"), "corrupt config"),
        (lambda p: (p / "model.safetensors").unlink(), "no model.safetensors"),
        (lambda p: (p / "model.safetensors").write_bytes(b"\x80\x04pickle"), "unreadable weights"),
        (lambda p: _truncate(p / "model.safetensors"), "model.safetensors: unreadable weights"),
        # Hostile configs: refused before anything is allocated.
        (
            lambda p: _edit_config(p, "model", "config", "hidden_dim", value=10**6),
            r"config and weights do not match \(.*1000000\) in the config's model",
        ),
        (
            lambda p: _edit_config(p, "model", "config", "hidden_dim", value=10**12),
            "model setting 'hidden_dim': 1000000000000 is not a setting",
        ),
        (lambda p: _edit_config(p, "model", "name", value={"x": 1}), "'model' must hold"),
        (lambda p: _edit_config(p, "vocabulary", "itos", value=7), "a word tokenizer needs"),
        (lambda p: _edit_config(p, "encoder", value=[]), "'encoder' must give its name"),
    ],
)
def test_damaged_run_folders(run_dir, damage, message):
    path, *_ = run_dir
    damage(path)
    with pytest.raises(CaptionkitError, match=message):
        load_checkpoint(path)


def test_missing_folder(tmp_path):
    with pytest.raises(CaptionkitError, match="checkpoint folder not found"):
        load_checkpoint(tmp_path / "nope")


def test_cli_names_a_truncated_weights_file_in_one_error_line(run_dir, tmp_path, capsys):
    from PIL import Image

    from captionkit.cli import main

    path, *_ = run_dir
    _truncate(path / "model.safetensors")
    Image.new("RGB", (32, 32), "red").save(tmp_path / "red.png")
    assert main(["caption", "--checkpoint", str(path), str(tmp_path / "red.png")]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert f"{path / 'model.safetensors'}: unreadable weights" in lines[0]
