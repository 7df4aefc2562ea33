"""Training options: schedules, label smoothing, early stopping, precision, accumulation."""

import csv
import json
import math

import pytest
import torch

from captionkit.cli import main
from captionkit.data.shapes import make_shapes
from captionkit.errors import CaptionkitError
from captionkit.training.config import DataConfig, OptimConfig, RunConfig, TrainConfig
from captionkit.training.module import caption_loss
from captionkit.training.schedules import lr_factor
from captionkit.training.train import train


def test_warmup_then_cosine_reaches_zero_at_the_last_step():
    f = lr_factor(OptimConfig(schedule="cosine", warmup_steps=4), total_steps=14)
    assert [f(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert f(4) == 1.0
    assert f(9) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))
    assert f(14) == pytest.approx(0.0)


def test_constant_schedule_without_warmup_is_one():
    f = lr_factor(OptimConfig(), total_steps=10)
    assert {f(s) for s in range(10)} == {1.0}


def test_lambda_scheduler_follows_the_factor():
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=0.1)
    factor = lr_factor(OptimConfig(schedule="cosine", warmup_steps=2), total_steps=6)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    seen = []
    for _ in range(6):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert seen == pytest.approx([0.1 * factor(s) for s in range(6)])


def test_unknown_schedule_is_an_error():
    with pytest.raises(CaptionkitError, match="unknown schedule 'linear'"):
        OptimConfig(schedule="linear")


def test_caption_loss_smooths_labels_and_ignores_padding():
    logits, eps = torch.randn(2, 3, 7), 0.1
    targets = torch.tensor([[4, 5, 2], [6, 2, 0]])  # 0 is <pad>: five real targets
    logp = logits.log_softmax(-1)[targets != 0]  # [5, V]
    real = targets[targets != 0]
    nll = -logp.gather(1, real[:, None]).squeeze(1)
    expected = ((1 - eps) * nll + eps * -logp.mean(-1)).mean()
    assert caption_loss(logits, targets, eps).item() == pytest.approx(expected.item())
    assert caption_loss(logits, targets).item() == pytest.approx(nll.mean().item())


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    folder = tmp_path_factory.mktemp("shapes")
    make_shapes(folder, n_images=20, seed=1)
    return folder


def test_early_stopping_bf16_accumulation_and_value_clipping(shapes, tmp_path):
    """With a learning rate of 0 val CIDEr never improves: patience 1 stops after 2 epochs."""
    tiny = {"d_model": 16, "n_heads": 2, "n_layers": 1, "d_ff": 32}
    config = RunConfig(model="transformer", model_args=tiny,
                       data=DataConfig(str(shapes), min_count=1),
                       optim=OptimConfig(lr=0.0, accumulate=2, grad_clip=0.5,
                                         grad_clip_algorithm="value"),
                       train=TrainConfig(epochs=6, batch_size=8, patience=1,
                                         precision="bf16-mixed"))  # fmt: skip
    train(config, tmp_path / "run")
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1]
    assert rows[0]["val/CIDEr"] == rows[1]["val/CIDEr"]
    assert all(0.0 <= r["val/BLEU-4"] <= 1.0 for r in rows)


def test_a_short_run_with_adamw_plateau_and_scheduled_sampling(shapes, tmp_path):
    """Features cached by the test above: same images, encoder and grid."""
    tiny = {"d_model": 16, "n_heads": 2, "n_layers": 1, "d_ff": 32}
    config = RunConfig(model="transformer", model_args=tiny,
                       data=DataConfig(str(shapes), min_count=1),
                       optim=OptimConfig(lr=1e-3, optimizer="adamw", weight_decay=0.01,
                                         schedule="plateau", warmup_steps=5, plateau_patience=0,
                                         scheduled_sampling=0.4, ss_start_epoch=1,
                                         ss_ramp_epochs=2),
                       train=TrainConfig(epochs=3, batch_size=8, accelerator="cpu"))  # fmt: skip
    best = train(config, tmp_path / "run")
    assert math.isfinite(best["val/CIDEr"])
    with open(next((tmp_path / "run" / "logs").rglob("metrics.csv"))) as f:
        rows = list(csv.DictReader(f))
    losses = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    probs = {int(r["epoch"]): float(r["train/ss_prob"]) for r in rows if r.get("train/ss_prob")}
    assert losses and all(math.isfinite(x) for x in losses)
    assert probs == pytest.approx({0: 0.0, 1: 0.2, 2: 0.4})


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--precision", "8", "unknown precision '8' (32 or bf16-mixed or 16-mixed)"),
        (
            "--schedule",
            "linear",
            "unknown schedule 'linear' (constant or cosine or step or plateau or noam)",
        ),
        ("--optimizer", "sgd", "unknown optimizer 'sgd' (adam or adamw)"),
        ("--schedule", "noam", "schedule noam needs warmup_steps > 0 (the step of its peak)"),
        ("--plateau-factor", "1", "plateau_factor must be in (0, 1), not 1.0"),
        ("--lr-gamma", "1.5", "lr_gamma must be in (0, 1], not 1.5"),
    ],
)
def test_bad_training_choices_are_one_line(tmp_path, capsys, option, value, message):
    argv = ["train", "--data", str(tmp_path), "--out", str(tmp_path / "run"), option, value]
    assert main(argv) == 1
    assert capsys.readouterr().err.strip() == f"error: {message}"


def test_bad_clip_algorithm_is_an_error():
    with pytest.raises(CaptionkitError, match="unknown grad_clip_algorithm 'max'"):
        OptimConfig(grad_clip_algorithm="max")
