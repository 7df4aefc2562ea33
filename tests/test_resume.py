"""Checkpoints and resuming: the training-state file format, the kill test of issue #6 (a run
killed with SIGKILL in the middle of an epoch, or while writing a checkpoint, then resumed,
ends with the metrics and weights of an uninterrupted run) and the pre-emption test of #34 (a
run sent SIGTERM, or SLURM's SIGUSR1, saves its step, stops, and resumes to the same end)."""

import errno
import os
import signal
from pathlib import Path

import pytest
import torch

from captionkit.data.shapes import make_shapes
from captionkit.errors import CaptionkitError
from captionkit.models import MODELS, create_model
from captionkit.training.config import (
    DataConfig,
    EncoderConfig,
    OptimConfig,
    RunConfig,
    TrainConfig,
)
from captionkit.training.module import caption_loss
from captionkit.training.resume_checkpoints import load_state, save_state
from captionkit.training.train import train

from conftest import TINY, assert_same_run, metrics_rows, run_captionkit


def test_training_state_round_trip_keeps_types(tmp_path):
    state = {
        "state_dict": {"w": torch.randn(3, 2), "b": torch.arange(4)},
        "optimizer_states": [{"state": {0: {"step": torch.tensor(3.0)}}, "param_groups":
                              [{"lr": 1e-3, "betas": (0.9, 0.999), "params": [0]}]}],
        "loops": {"nested": {"ready": 5, "flag": True, "none": None, "inf": float("inf")}},
    }  # fmt: skip
    save_state(state, tmp_path / "last.safetensors")
    back = load_state(tmp_path / "last.safetensors")
    assert torch.equal(back["state_dict"]["w"], state["state_dict"]["w"])
    assert back["state_dict"]["b"].dtype == torch.int64
    group = back["optimizer_states"][0]
    assert list(group["state"]) == [0]  # an int key, as torch's optimizer needs
    assert group["param_groups"][0]["betas"] == (0.9, 0.999)
    assert back["loops"] == state["loops"]
    assert os.listdir(tmp_path) == ["last.safetensors"]  # no temporary file left


def test_training_state_refuses_code_and_foreign_files(tmp_path):
    with pytest.raises(CaptionkitError, match=r"cannot store a function at checkpoint\['hook'\]"):
        save_state({"hook": lambda: 0}, tmp_path / "x.safetensors")
    (tmp_path / "bad.safetensors").write_bytes(b"\x00" * 10)
    with pytest.raises(CaptionkitError, match="bad.safetensors: damaged training checkpoint"):
        load_state(tmp_path / "bad.safetensors")
    with pytest.raises(CaptionkitError, match="no such training checkpoint"):
        load_state(tmp_path / "none.safetensors")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """The faulty runs are processes on one thread (`conftest.start_captionkit`): the runs they
    are compared with, and their resumes, train on one thread too, so that every sum adds up in
    the same order and the weights can be compared exactly."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def config(tmp_path_factory) -> RunConfig:
    folder = tmp_path_factory.mktemp("shapes")
    make_shapes(folder, n_images=30, seed=3)
    # Dropout on, so that a resume that lost the random state could not pass; so do the weight
    # average (EMA) and the feature view of each image, drawn per epoch.
    tiny = {"embed_dim": 24, "hidden_dim": 32, "dropout": 0.5}
    return RunConfig(model="show_tell", model_args=tiny, data=DataConfig(str(folder), min_count=1),
                     encoder=EncoderConfig(feature_views=2), optim=OptimConfig(ema=0.9),
                     train=TrainConfig(epochs=3, batch_size=16, checkpoint_every=4,
                                       deterministic=True))  # fmt: skip


@pytest.fixture(scope="module")
def uninterrupted(config, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("whole") / "run"
    train(config, run)
    return run


def _faulty_run(config: RunConfig, run: Path, fault: str, code: int = -signal.SIGKILL,
                env: dict | None = None) -> str:  # fmt: skip
    """Train `config` into `run` in a process with `fault` (fault_driver.py), which must end it
    with exit code `code`; returns its output."""
    run.parent.mkdir(parents=True, exist_ok=True)
    config.to_yaml(run.parent / "config.yaml")
    args = ["train", "--config", run.parent / "config.yaml", "--out", run]
    returned, output = run_captionkit(args, run.parent / "train.log", fault, env)
    assert returned == code, output[-3000:]
    return output


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["KILL step 0 9", "KILL save 4"])
def test_killed_run_resumes_to_the_uninterrupted_result(config, uninterrupted, tmp_path, fault):
    """7 batches an epoch, `last` saved at steps 4, 7 (after validation, beside `best`) and 8.
    Killed at step 9: the resume starts from step 8's, in the middle of epoch 1. Killed while
    writing the 4th file (step 8's `last`): from step 7's, the end of epoch 0."""
    run = tmp_path / "run"
    _faulty_run(config, run, fault)
    last = load_state(run / "checkpoints" / "last.safetensors")
    assert last["global_step"] == (8 if "step" in fault else 7)
    train(config, run, resume=True)
    assert_same_run(run, uninterrupted)
    assert not [p for p in (run / "checkpoints").iterdir() if ".tmp-" in p.name]


def _fake_slurm(folder: Path) -> dict:
    """The environment of SLURM job 4242 (one task), with an `scontrol` that records its
    arguments in `folder/scontrol.calls`."""
    scontrol = folder / "bin" / "scontrol"
    scontrol.parent.mkdir(parents=True)
    scontrol.write_text(f'#!/bin/sh\necho "$@" >> {folder / "scontrol.calls"}\n')
    scontrol.chmod(0o755)
    return {"SLURM_JOB_ID": "4242", "SLURM_JOB_NAME": "captionkit", "SLURM_NTASKS": "1",
            "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODEID": "0",
            "PATH": f"{scontrol.parent}{os.pathsep}{os.environ['PATH']}"}  # fmt: skip


@pytest.mark.slow
def test_under_slurm_a_checkpoint_left_where_the_job_starts_is_not_restored(
    config, uninterrupted, tmp_path, monkeypatch
):
    """Under SLURM, Lightning restores the `hpc_ckpt_*.ckpt` it finds in its root folder at the
    start of a fit: that folder is the run's, so another job's file in the directory the job was
    launched from neither stops this run nor leaks into it."""
    env = _fake_slurm(tmp_path)
    env.pop("PATH")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    launched = tmp_path / "launched"
    launched.mkdir()
    (launched / "hpc_ckpt_1.ckpt").write_bytes(b"another job's checkpoint")
    monkeypatch.chdir(launched)
    run = tmp_path / "run"
    train(config, run)
    assert_same_run(run, uninterrupted)


@pytest.mark.slow
@pytest.mark.parametrize("signame", ["TERM", "USR1"])
def test_preempted_run_saves_its_step_and_resumes_to_the_uninterrupted_result(
    config, uninterrupted, tmp_path, signame
):
    """SIGTERM as step 9 starts (no checkpoint due before step 12): step 9 ends, the state after
    it (global step 10, in the middle of epoch 1) is saved, and the run stops with 143 (128 +
    SIGTERM) and says how to go on. Under SLURM, SIGUSR1 (`--signal=USR1@90`) also requeues."""
    run = tmp_path / "run"
    signum = getattr(signal, f"SIG{signame}")
    env = _fake_slurm(tmp_path) if signame == "USR1" else None
    output = _faulty_run(config, run, f"{signame} step 0 9", 128 + signum, env)
    last = run / "checkpoints" / "last.safetensors"
    assert load_state(last)["global_step"] == 10
    then = f"continue with: captionkit train --resume {run}"
    if env:
        assert (tmp_path / "scontrol.calls").read_text() == "requeue 4242\n"
        then = f"requeued SLURM job 4242; its script must then run: captionkit train --resume {run}"
    errors = [line for line in output.splitlines() if line.startswith("error: ")]
    assert errors == [f"error: pre-empted (SIG{signame}) at step 10: saved {last}; {then}"]
    train(config, run, resume=True)
    assert_same_run(run, uninterrupted)


@pytest.mark.slow
def test_killed_run_averaging_its_last_epochs_resumes_to_the_uninterrupted_result(config, tmp_path):
    """The mean of the (EMA) weights of epochs 1 and 2 (`average_last`): killed at step 15, the
    run resumes from step 14's `last`, saved after epoch 1 joined the mean: the mean and its
    count come back from it, and epoch 2 joins them."""
    settings = config.to_dict()
    settings["optim"]["average_last"] = 2
    averaging = RunConfig.from_dict(settings)
    train(averaging, tmp_path / "whole")
    run = tmp_path / "killed" / "run"
    _faulty_run(averaging, run, "KILL step 0 15")
    assert load_state(run / "checkpoints" / "last.safetensors")["global_step"] == 14
    train(averaging, run, resume=True)
    assert_same_run(run, tmp_path / "whole")


def test_resume_refuses_other_model_settings_and_missing_checkpoints(config, tmp_path):
    with pytest.raises(CaptionkitError, match="not a run folder"):
        train(config, tmp_path, resume=True)
    config.to_yaml(tmp_path / "config.yaml")
    with pytest.raises(CaptionkitError, match=r"no checkpoints/last.safetensors"):
        train(config, tmp_path, resume=True)
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.safetensors").write_bytes(b"")
    other = RunConfig.from_dict({**config.to_dict(), "model_args": {"hidden_dim": 64}})
    with pytest.raises(CaptionkitError, match=r"other settings than the run's \(model_args"):
        train(other, tmp_path, resume=True)


@pytest.mark.slow
def test_every_epoch_trains_on_a_new_batch_order(config, tmp_path, monkeypatch):
    """Lightning calls `set_epoch` on a DataLoader's sampler, not on its batch sampler: before
    `DataPosition` did it, every epoch repeated the first one's batches."""
    from captionkit.training.module import CaptioningModule

    seen: dict[int, list] = {}
    before = CaptioningModule.on_train_batch_start

    def record(self, batch, batch_idx):
        seen.setdefault(self.current_epoch, []).append(batch["tokens"].sum().item())
        before(self, batch, batch_idx)

    monkeypatch.setattr(CaptioningModule, "on_train_batch_start", record)
    short = RunConfig.from_dict({**config.to_dict(), "train": {**config.to_dict()["train"],
                                                                "epochs": 2}})  # fmt: skip
    train(short, tmp_path / "run")
    assert len(seen[0]) == len(seen[1]) == 7
    assert seen[0] != seen[1]


@pytest.mark.slow
def test_cli_resume_extends_a_finished_run(config, tmp_path, capsys):
    from captionkit.cli import main

    one_epoch = RunConfig.from_dict({**config.to_dict(), "train": {**config.to_dict()["train"],
                                                                   "epochs": 1}})  # fmt: skip
    one_epoch.to_yaml(tmp_path / "cfg.yaml")
    run = tmp_path / "run"
    assert main(["train", "--config", str(tmp_path / "cfg.yaml"), "--out", str(run)]) == 0
    assert main(["train", "--resume", str(run), "--epochs", "2"]) == 0
    assert "resuming with train.epochs 2 (was 1)" in capsys.readouterr().out
    assert [r["epoch"] for r in metrics_rows(run)] == [0, 1]
    assert RunConfig.from_yaml(run / "config.yaml").train.epochs == 2
    assert main(["train", "--resume", str(run), "--out", str(run)]) == 1
    assert "give neither --config nor --out" in capsys.readouterr().err
    assert main(["train", "--resume", str(tmp_path / "nothing")]) == 1
    assert "not a run folder (no config.yaml)" in capsys.readouterr().err


def test_an_early_stopped_run_resumes_with_the_patience_given(config, tmp_path, capsys,
                                                             monkeypatch):  # fmt: skip
    """Val CIDEr held fixed: with patience 1 the run stops after epoch 1. Resumed from the
    checkpoint saved after that validation (which failed: Lightning checked at the end of the
    epoch, before the resumed run had validated), with `--patience 3` (not the checkpoint's 1),
    it runs two more epochs."""
    import captionkit.training.module as module
    from captionkit.cli import main

    monkeypatch.setattr(module, "quick_metrics", lambda *_: {"CIDEr": 0.5, "BLEU-4": 0.1})
    settings = config.to_dict()
    settings["train"].update(epochs=6, patience=1)
    RunConfig.from_dict(settings).to_yaml(tmp_path / "cfg.yaml")
    run = tmp_path / "run"
    assert main(["train", "--config", str(tmp_path / "cfg.yaml"), "--out", str(run)]) == 0
    assert [r["epoch"] for r in metrics_rows(run)] == [0, 1]
    assert main(["train", "--resume", str(run), "--patience", "3"]) == 0
    assert "resuming with train.patience 3 (was 1)" in capsys.readouterr().out
    assert [r["epoch"] for r in metrics_rows(run)] == [0, 1, 2, 3]


@pytest.mark.parametrize("name", sorted(MODELS))
def test_training_state_of_every_model_resumes_the_same_steps(name, tmp_path):
    """The fast check, per model, of what the kill test checks for Show-and-Tell: weights and
    Adam's state through the training-state file give the next step the uninterrupted run takes."""
    tokens = torch.tensor([[1, 5, 6, 2], [1, 7, 2, 0]])  # <bos> .. <eos> <pad>

    def fresh():
        torch.manual_seed(0)
        model = create_model(name, vocab_size=9, feature_dim=4, **TINY[name]).eval()
        return model, torch.optim.Adam(model.parameters(), lr=1e-2)

    def step(model, optimizer):
        pooled, grid = torch.ones(2, 4), torch.linspace(-1, 1, 24).reshape(2, 3, 4)
        loss = caption_loss(model(pooled, grid, tokens[:, :-1]), tokens[:, 1:])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    model, optimizer = fresh()
    step(model, optimizer)
    save_state({"state_dict": model.state_dict(), "optimizer_states": [optimizer.state_dict()]},
               tmp_path / "last.safetensors")  # fmt: skip
    step(model, optimizer)  # the uninterrupted run's second step
    resumed, resumed_optimizer = fresh()
    state = load_state(tmp_path / "last.safetensors")
    resumed.load_state_dict(state["state_dict"])
    resumed_optimizer.load_state_dict(state["optimizer_states"][0])
    step(resumed, resumed_optimizer)
    for key, value in model.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[key], value, msg=key)


@pytest.mark.slow
def test_a_second_train_into_the_same_folder_is_refused_naming_the_first(config, tmp_path):
    from captionkit.training.run_preparation import run_folder_lock

    run = tmp_path / "run"
    with run_folder_lock(run):  # as a first `train` holds it
        with pytest.raises(CaptionkitError, match=rf"another training run \(process {os.getpid()}"):
            train(config, run)
        assert not (run / "config.yaml").exists()  # refused before touching the folder
    one_epoch = RunConfig.from_dict({**config.to_dict(), "train": {**config.to_dict()["train"],
                                                                   "epochs": 1}})  # fmt: skip
    train(one_epoch, run)  # the lock went with its holder
    assert (run / "model.safetensors").exists()


def _full_disk_on_call(n: int, monkeypatch) -> None:
    """From the `n`-th training-state save on, the write stops half-way on a full disk."""
    from captionkit.training import resume_checkpoints

    real, calls = resume_checkpoints.save_file, []

    def failing(tensors, filename, metadata=None):
        calls.append(filename)
        real(tensors, filename, metadata=metadata)
        if len(calls) >= n:
            with open(filename, "r+b") as f:
                f.truncate(os.path.getsize(filename) // 2)
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(resume_checkpoints, "save_file", failing)


def test_a_full_disk_while_saving_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "checkpoints" / "last.safetensors"
    save_state({"state_dict": {"w": torch.ones(3)}, "epoch": 1}, path)
    _full_disk_on_call(1, monkeypatch)
    with pytest.raises(CaptionkitError, match=r"last.safetensors: could not write it \(No space "
                       r"left on device\); the previous one is intact"):  # fmt: skip
        save_state({"state_dict": {"w": torch.zeros(3)}, "epoch": 2}, path)
    assert load_state(path)["epoch"] == 1
    assert os.listdir(path.parent) == ["last.safetensors"]  # no partial file left


@pytest.mark.slow
def test_train_on_a_full_disk_stops_with_one_error_and_an_intact_checkpoint(
    config, tmp_path, monkeypatch, capsys
):
    from captionkit.cli import main

    config.to_yaml(tmp_path / "config.yaml")
    _full_disk_on_call(3, monkeypatch)  # the first two saves (after step 4 and epoch 0) work
    run = tmp_path / "run"
    assert main(["train", "--config", str(tmp_path / "config.yaml"), "--out", str(run)]) == 1
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("error: ") and "No space left on device" in error
    assert "the previous one is intact" in error
    saved = load_state(run / "checkpoints" / "last.safetensors")
    assert saved["global_step"] > 0
    assert not list(run.rglob(".*.tmp-*"))
