"""Learning-rate schedules and label smoothing of the training module."""

import math

import pytest
import torch

from captionkit.cli import main
from captionkit.errors import CaptionkitError
from captionkit.training.config import OptimConfig
from captionkit.training.module import caption_loss, lr_factor


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


def test_unknown_schedule_is_an_error_on_the_command_line(tmp_path, capsys):
    with pytest.raises(CaptionkitError, match="unknown schedule 'linear'"):
        OptimConfig(schedule="linear")
    argv = [
        "train",
        "--data",
        str(tmp_path),
        "--out",
        str(tmp_path / "run"),
        "--schedule",
        "linear",
    ]
    assert main(argv) == 1
    assert "error: unknown schedule 'linear' (constant or cosine)" in capsys.readouterr().err


def test_caption_loss_smooths_labels_and_ignores_padding():
    logits, eps = torch.randn(2, 3, 7), 0.1
    targets = torch.tensor([[4, 5, 2], [6, 2, 0]])  # 0 is <pad>: five real targets
    logp = logits.log_softmax(-1)[targets != 0]  # [5, V]
    real = targets[targets != 0]
    nll = -logp.gather(1, real[:, None]).squeeze(1)
    expected = ((1 - eps) * nll + eps * -logp.mean(-1)).mean()
    assert caption_loss(logits, targets, eps).item() == pytest.approx(expected.item())
    assert caption_loss(logits, targets).item() == pytest.approx(nll.mean().item())
