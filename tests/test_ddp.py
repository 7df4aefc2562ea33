"""Scale-out: DDP with 2 CPU processes (gloo) trains the model one process trains on the same
global batches, and validation scores every rank's captions, not rank 0's share."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from captionkit.data.shapes import make_shapes
from captionkit.training.config import DataConfig, OptimConfig, RunConfig, TrainConfig

pytestmark = pytest.mark.slow  # trains three times (make test-slow)


def _train(config: Path, out: Path, *options: str) -> list[dict]:
    cmd = [sys.executable, "-m", "captionkit", "train", "--config", str(config), "--out", str(out),
           *options]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def test_ddp_on_two_processes_matches_one_process_on_the_global_batch(tmp_path):
    make_shapes(tmp_path / "shapes", n_images=30, seed=4)
    # No dropout (each rank draws its own masks) and LayerNorm, not BatchNorm (batch statistics
    # of a half batch differ): then the two runs compute the same thing.
    tiny = {"d_model": 32, "n_heads": 2, "n_layers": 1, "d_ff": 64, "dropout": 0.0}
    config = RunConfig(model="transformer", model_args=tiny,
                       data=DataConfig(str(tmp_path / "shapes"), min_count=1),
                       optim=OptimConfig(lr=3e-3),
                       train=TrainConfig(epochs=2, accelerator="cpu",
                                         deterministic=True))  # fmt: skip
    config.to_yaml(tmp_path / "cfg.yaml")
    one = _train(tmp_path / "cfg.yaml", tmp_path / "one", "--batch-size", "16")
    two = _train(tmp_path / "cfg.yaml", tmp_path / "two", "--batch-size", "8", "--devices", "2",
                 "--strategy", "ddp")  # fmt: skip
    assert [r["step"] for r in two] == [r["step"] for r in one] == [7, 14]
    # 3 validation images: rank 0 decodes 2 of them, rank 1 the third (and one twice).
    assert [r["val/images"] for r in two] == [3.0, 3.0]
    for a, b in zip(one, two):
        assert b["val/CIDEr"] == pytest.approx(a["val/CIDEr"], abs=1e-6)
        assert b["val/BLEU-4"] == pytest.approx(a["val/BLEU-4"], abs=1e-6)
    ours, theirs = (
        load_file(tmp_path / "two" / "model.safetensors"),
        load_file(tmp_path / "one" / "model.safetensors"),
    )
    for name, weight in theirs.items():
        mine = ours[name]
        if name.endswith("kv_proj.bias"):
            # The key bias adds the same number to every attention score of a query, so its true
            # gradient is 0: Adam turns the rounding noise left there into full-size steps.
            # Compare the value bias only.
            mine, weight = mine[tiny["d_model"] :], weight[tiny["d_model"] :]
        torch.testing.assert_close(mine, weight, atol=1e-5, rtol=1e-4, msg=name)
    # Both trained (equal weights would prove nothing if nothing had moved).
    assert (
        one[1]["train/loss"] < one[0]["train/loss"] and two[1]["train/loss"] < two[0]["train/loss"]
    )
