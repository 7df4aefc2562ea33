"""Scale-out: DDP with 2 CPU processes (gloo) trains the model one process trains on the same
global batches, and validation scores every rank's captions, not rank 0's share."""

import json
import os
import socket
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


# No dropout (each rank draws its own masks) and LayerNorm, not BatchNorm (batch statistics of a
# half batch differ): then one process and two compute the same thing.
TINY = {"d_model": 32, "n_heads": 2, "n_layers": 1, "d_ff": 64, "dropout": 0.0}


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[Path, list[dict]]:
    """A config, and the metrics of one process training it on batches of 16."""
    folder = tmp_path_factory.mktemp("ddp")
    make_shapes(folder / "shapes", n_images=30, seed=4)
    config = RunConfig(model="transformer", model_args=TINY,
                       data=DataConfig(str(folder / "shapes"), min_count=1),
                       optim=OptimConfig(lr=3e-3),
                       train=TrainConfig(epochs=2, accelerator="cpu",
                                         deterministic=True))  # fmt: skip
    config.to_yaml(folder / "cfg.yaml")
    return folder, _train(folder / "cfg.yaml", folder / "one", "--batch-size", "16")


def _assert_same_training(one: list[dict], two: list[dict], runs: tuple[Path, Path]) -> None:
    assert [r["step"] for r in two] == [r["step"] for r in one] == [7, 14]
    # 3 validation images: rank 0 decodes 2 of them, rank 1 the third (and one twice).
    assert [r["val/images"] for r in two] == [3.0, 3.0]
    for a, b in zip(one, two):
        assert b["val/CIDEr"] == pytest.approx(a["val/CIDEr"], abs=1e-6)
        assert b["val/BLEU-4"] == pytest.approx(a["val/BLEU-4"], abs=1e-6)
    theirs, ours = (load_file(run / "model.safetensors") for run in runs)
    for name, weight in theirs.items():
        mine = ours[name]
        if name.endswith("kv_proj.bias"):
            # The key bias adds the same number to every attention score of a query, so its true
            # gradient is 0: Adam turns the rounding noise left there into full-size steps.
            # Compare the value bias only.
            mine, weight = mine[TINY["d_model"] :], weight[TINY["d_model"] :]
        torch.testing.assert_close(mine, weight, atol=1e-5, rtol=1e-4, msg=name)
    # Both trained (equal weights would prove nothing if nothing had moved).
    assert (
        one[1]["train/loss"] < one[0]["train/loss"] and two[1]["train/loss"] < two[0]["train/loss"]
    )


def test_ddp_on_two_processes_matches_one_process_on_the_global_batch(reference):
    folder, one = reference
    two = _train(folder / "cfg.yaml", folder / "two", "--batch-size", "8", "--devices", "2",
                 "--strategy", "ddp")  # fmt: skip
    _assert_same_training(one, two, (folder / "one", folder / "two"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_nodes_under_torchrun_match_one_process(reference):
    """2 "machines" on this one: `torchrun --nnodes 2` twice (node ranks 0 and 1, one process
    each, loopback rendezvous, gloo), as on two hosts of a cluster."""
    folder, one = reference
    port, out = _free_port(), folder / "nodes"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}
    logs = [folder / f"node{rank}.log" for rank in (0, 1)]  # files, not pipes: a full pipe
    nodes = []  # would stall its node, and with it the other at their next collective
    for rank, log in enumerate(logs):
        with open(log, "w") as f:
            nodes.append(subprocess.Popen(
                [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2",
                 "--nproc-per-node", "1", "--node-rank", str(rank), "--master-addr", "127.0.0.1",
                 "--master-port", str(port), "-m", "captionkit", "train", "--config",
                 str(folder / "cfg.yaml"), "--out", str(out), "--batch-size", "8",
                 "--num-nodes", "2", "--devices", "1", "--strategy", "ddp"],
                env=env, stdout=f, stderr=subprocess.STDOUT,
            ))  # fmt: skip
    try:
        codes = [node.wait(timeout=300) for node in nodes]
    finally:
        for node in nodes:
            node.kill()
    assert codes == [0, 0], "".join(log.read_text()[-3000:] for log in logs)
    two = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    _assert_same_training(one, two, (folder / "one", out))


def test_ddp_with_weighted_captions_matches_one_process(reference):
    """Caption weights make the loss a weighted token mean: the ranks' shares of the global batch
    carry different total weights, which the DDP rescaling must count."""
    folder, _ = reference
    weighted = ("--caption-weights", "consensus")
    one = _train(folder / "cfg.yaml", folder / "one-w", "--batch-size", "16", *weighted)
    two = _train(folder / "cfg.yaml", folder / "two-w", "--batch-size", "8", "--devices", "2",
                 "--strategy", "ddp", *weighted)  # fmt: skip
    _assert_same_training(one, two, (folder / "one-w", folder / "two-w"))
