"""Scale-out: DDP with 2 CPU processes (gloo) trains the model one process trains on the same
global batches, and validation scores every rank's captions, not rank 0's share. Its faults: a
rank that dies stops the other at once, naming it, and a pre-empted run (SIGTERM) saves its step;
both resume to the weights of the uninterrupted run."""

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from captionkit.data.shapes import make_shapes
from captionkit.training.config import DataConfig, OptimConfig, RunConfig, TrainConfig
from captionkit.training.resume_checkpoints import load_state

from conftest import assert_same_run, metrics_rows, run_captionkit, start_captionkit

pytestmark = pytest.mark.slow  # trains nine times (make test-slow)

TWO = ("--batch-size", "8", "--devices", "2", "--strategy", "ddp")  # 2 processes, as one of 16


def _train(config: Path, out: Path, *options: str) -> list[dict]:
    code, output = run_captionkit(["train", "--config", config, "--out", out, *options],
                                  out.with_suffix(".log"))  # fmt: skip
    assert code == 0, output[-3000:]
    return metrics_rows(out)


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


@pytest.fixture(scope="module")
def two(reference) -> Path:
    """The reference config trained by 2 processes, uninterrupted: its run folder."""
    folder, _ = reference
    _train(folder / "cfg.yaml", folder / "two", *TWO)
    return folder / "two"


def test_ddp_on_two_processes_matches_one_process_on_the_global_batch(reference, two):
    folder, one = reference
    _assert_same_training(one, metrics_rows(two), (folder / "one", two))


def _assert_resumes_to(run: Path, uninterrupted: Path) -> None:
    """`train --resume RUN` (2 processes, as the run's config says) ends with the uninterrupted
    run's metrics and weights, exactly."""
    code, output = run_captionkit(["train", "--resume", run], run.with_suffix(".resumed.log"))
    assert code == 0, output[-3000:]
    assert_same_run(run, uninterrupted)


def _errors(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("error: ")]


def test_a_killed_rank_stops_the_other_at_once_naming_it_and_the_run_resumes(
    reference, two, tmp_path
):
    """Rank 1 SIGKILLed as step 9 starts (in epoch 1; `last` was saved after epoch 0's 7 steps):
    rank 0 ends within 60 s, not at the collective timeout (`--ddp-timeout`, 600 s), with one
    error naming rank 1; `--resume` trains on from step 7 to the uninterrupted run's weights."""
    folder, _ = reference
    run = tmp_path / "run"
    args = ["train", "--config", folder / "cfg.yaml", "--out", run, *TWO]
    rank0 = start_captionkit(args, tmp_path / "run.log", "KILL step 1 9")
    try:
        code = rank0.wait(timeout=600)
    finally:
        rank0.kill()
    ended, output = time.time(), (tmp_path / "run.log").read_text()
    killed = float(re.search(r"fault: SIGKILL at ([0-9.]+)", output)[1])
    assert code == 1, output[-3000:]
    assert ended - killed < 60
    rank = r"rank 1 \(process \d+ on [^)]+\): killed by SIGKILL"
    (error,) = _errors(output)
    assert re.fullmatch(rf"error: the DDP run lost {rank}.*; the other ranks stopped at step 9\. "
                        rf"Continue from the last checkpoint: captionkit train --resume {run}",
                        error), error  # fmt: skip
    assert "Traceback" not in output
    assert load_state(run / "checkpoints" / "last.safetensors")["global_step"] == 7
    _assert_resumes_to(run, two)


def test_a_preempted_ddp_run_stops_both_ranks_at_one_step_and_resumes(reference, two, tmp_path):
    """SIGTERM to rank 1 only, as step 9 starts: the ranks agree, save the state after that step
    (10) and both stop with 143; `--resume` ends with the uninterrupted run's weights."""
    folder, _ = reference
    run = tmp_path / "run"
    args = ["train", "--config", folder / "cfg.yaml", "--out", run, *TWO]
    code, output = run_captionkit(args, tmp_path / "run.log", "TERM step 1 9")
    assert code == 128 + signal.SIGTERM, output[-3000:]
    last = run / "checkpoints" / "last.safetensors"
    # One line from each process.
    line = f"error: pre-empted (SIGTERM) at step 10: saved {last}; continue with: captionkit " \
           f"train --resume {run}"  # fmt: skip
    assert _errors(output) == [line, line]
    assert load_state(last)["global_step"] == 10
    _assert_resumes_to(run, two)


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
    _assert_same_training(one, metrics_rows(out), (folder / "one", out))


def test_ddp_with_weighted_captions_matches_one_process(reference):
    """Caption weights make the loss a weighted token mean: the ranks' shares of the global batch
    carry different total weights, which the DDP rescaling must count."""
    folder, _ = reference
    weighted = ("--caption-weights", "consensus")
    one = _train(folder / "cfg.yaml", folder / "one-w", "--batch-size", "16", *weighted)
    two = _train(folder / "cfg.yaml", folder / "two-w", *TWO, *weighted)
    _assert_same_training(one, two, (folder / "one-w", folder / "two-w"))
