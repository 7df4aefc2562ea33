"""Training options: schedules, label smoothing, early stopping, precision, accumulation."""

import csv
import json
import math

import lightning as L
import numpy as np
import pytest
import torch

from captionkit.cli import main
from captionkit.data.shapes import make_shapes
from captionkit.data.vocab import Vocabulary
from captionkit.decoding import DecodingOptions
from captionkit.errors import CaptionkitError
from captionkit.models import create_model
from captionkit.models.run_folder import load_checkpoint
from captionkit.training import module as training_module
from captionkit.training.config import DataConfig, OptimConfig, RunConfig, TrainConfig
from captionkit.training.module import CaptioningModule, caption_loss, loss_steps
from captionkit.training.resume_checkpoints import load_state
from captionkit.training.run_data import consensus_weights
from captionkit.training.schedules import lr_factor
from captionkit.training.train import _trainer, train

from conftest import TINY, pycocoevalcap_cider


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


def test_caption_loss_weights_each_captions_tokens():
    logits = torch.randn(3, 3, 7)
    targets = torch.tensor([[4, 5, 2], [6, 2, 0], [5, 2, 0]])
    nll = -logits.log_softmax(-1).gather(2, targets[..., None]).squeeze(-1)  # [3, 3]
    real = (targets != 0).float()
    weights = torch.tensor([0.5, 2.0, 0.0])
    expected = (nll * real * weights[:, None]).sum() / (real * weights[:, None]).sum()
    assert caption_loss(logits, targets, weights=weights).item() == pytest.approx(expected.item())
    ones = caption_loss(logits, targets, weights=torch.ones(3))
    assert ones.item() == pytest.approx(caption_loss(logits, targets).item())


def test_consensus_weights_are_cider_d_against_the_other_captions_as_pycocoevalcap():
    captions = [
        ["a dog runs on the grass", "a brown dog runs on grass", "a dog is running",
         "the sky is blue"],
        ["a man rides a bike", "a man on a bike", "a person cycling down a street"],
        ["one caption only"],
        ["x y", "z w"],  # no n-gram in common: every score 0
    ]  # fmt: skip
    weights = consensus_weights(captions)
    for caps, mine in zip(captions[:2], weights):
        scores = [pycocoevalcap_cider(c, caps[:j] + caps[j + 1 :], captions)
                  for j, c in enumerate(caps)]  # fmt: skip
        np.testing.assert_allclose(mine, np.array(scores) * len(caps) / sum(scores), rtol=1e-6)
        assert np.mean(mine) == pytest.approx(1.0)
    assert weights[0][3] == min(weights[0])  # the caption no other one agrees with
    assert weights[2:] == [[1.0], [1.0, 1.0]]


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    folder = tmp_path_factory.mktemp("shapes")
    make_shapes(folder, n_images=20, seed=1)
    return folder


def test_early_stopping_with_bf16_accumulation_and_clipping_through_train(shapes, tmp_path):
    """With a learning rate of 0 val CIDEr never improves: patience 1 stops after 2 epochs. The
    other options only have to run through `train` here: the tests below show what each does."""
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
    # Two batches per optimizer step: half as many steps as the epoch has batches.
    splits = json.loads((tmp_path / "run" / "splits.json").read_text())
    batches = math.ceil(5 * list(splits.values()).count("train") / 8)  # 5 captions an image
    assert rows[0]["step"] == math.ceil(batches / 2) and rows[1]["step"] == 2 * rows[0]["step"]


# --- what each option does, on one optimizer step of a tiny deterministic model --------------


def _batch(captions: int) -> dict:
    """`captions` captions of the same length (no padding: the token mean of two halves of the
    batch is then the mean of the halves' token means) with random features."""
    generator = torch.Generator().manual_seed(0)
    words = torch.randint(4, 10, (captions, 3), generator=generator)  # ids of "a".."f"
    bos, eos = torch.full((captions, 1), 1), torch.full((captions, 1), 2)
    return {"pooled": torch.randn(captions, 4, generator=generator), "grid": None,
            "tokens": torch.cat([bos, words, eos], dim=1)}  # fmt: skip


def _halves(batch: dict) -> list[dict]:
    half = len(batch["tokens"]) // 2
    return [{k: v if v is None else v[part] for k, v in batch.items()}
            for part in (slice(0, half), slice(half, None))]  # fmt: skip


def _tiny_model() -> torch.nn.Module:
    """The same model every call (seeded). No dropout, and no BatchNorm (Show-and-Tell's):
    nothing depends on the batch it is in."""
    torch.manual_seed(0)
    return create_model("transformer", vocab_size=10, feature_dim=4, d_model=8, n_heads=2,
                        n_layers=1, d_ff=16, dropout=0.0)  # fmt: skip


def _fit(tmp_path, batches: list[dict], precision: str = "32", **optim) -> dict:
    """One epoch over `batches` with the Trainer that `train` builds from these settings:
    the gradients of each optimizer step (as the optimizer used them: accumulated, clipped),
    the dtypes of the logits and the weights after."""
    model = _tiny_model()
    optim = OptimConfig(**{"lr": 0.01, "grad_clip": 0.0, **optim})
    module = CaptioningModule(model, Vocabulary(list("abcdef")), optim, {}, DecodingOptions())
    seen = {"grads": [], "dtypes": set()}
    model.register_forward_hook(lambda _, args, logits: seen["dtypes"].add(logits.dtype))

    seen["initial"], seen["weights_after"] = _flat(model), []

    def after_step(optimizer, *_):
        grads = [p.grad.flatten() for p in model.parameters() if p.grad is not None]
        seen["grads"].append(torch.cat(grads).clone())
        seen["weights_after"].append(_flat(model))

    class StepSpy(L.Callback):
        def on_train_start(self, trainer, pl_module):
            trainer.optimizers[0].register_step_post_hook(after_step)

    config = RunConfig(optim=optim, train=TrainConfig(epochs=1, precision=precision,
                                                      accelerator="cpu"))  # fmt: skip
    trainer = _trainer(config, tmp_path / precision, [StepSpy()])
    trainer.fit(module, torch.utils.data.DataLoader(batches, batch_size=None))
    seen["weights"], seen["module"] = _flat(model), module
    return seen


def _flat(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()]).clone()


def test_ema_is_the_warmed_up_running_average_of_the_weights_after_each_step(tmp_path):
    seen = _fit(tmp_path, [_batch(4) for _ in range(6)], ema=0.2)
    expected = seen["initial"]
    for step, weights in enumerate(seen["weights_after"]):
        decay = min(0.2, (1 + step) / (10 + step))  # 0.1, 0.18, then 0.2
        expected = decay * expected + (1 - decay) * weights
    module = seen["module"]
    assert torch.allclose(_flat(module.ema_model), expected, atol=1e-6)
    assert not torch.allclose(expected, seen["weights"])
    assert module.kept_model is module.ema_model
    assert _fit(tmp_path / "plain", [_batch(4)])["module"].ema_model is None


@pytest.mark.slow
def test_a_run_with_ema_exports_and_checkpoints_the_average(shapes, tmp_path):
    config = RunConfig(model="attention", model_args=dict(TINY["attention"]),
                       data=DataConfig(str(shapes), min_count=1), optim=OptimConfig(ema=0.9),
                       train=TrainConfig(epochs=1, batch_size=8))  # fmt: skip
    train(config, tmp_path / "run")
    state = load_state(tmp_path / "run" / "checkpoints" / "best.safetensors")["state_dict"]
    exported = load_checkpoint(tmp_path / "run").model.state_dict()
    for name, value in exported.items():
        assert torch.equal(value, state[f"ema_model.{name}"])
    assert any(not torch.equal(v, state[f"model.{k}"]) for k, v in exported.items())


@pytest.mark.slow
def test_average_last_exports_the_mean_of_the_last_epochs_weights(shapes, tmp_path, monkeypatch):
    seen = {}
    before = CaptioningModule.on_validation_epoch_start

    def record(self):  # the weights as the epoch left them, before they join the mean
        seen[self.current_epoch] = {k: v.clone() for k, v in self.model.state_dict().items()}
        before(self)

    monkeypatch.setattr(CaptioningModule, "on_validation_epoch_start", record)
    # Val CIDEr falls every epoch: a run kept by its best validation would export epoch 0.
    falling = iter([0.9, 0.8, 0.7])
    monkeypatch.setattr(training_module, "quick_metrics",
                        lambda *_: {"CIDEr": next(falling), "BLEU-4": 0.1})  # fmt: skip
    config = RunConfig(model="attention", model_args=dict(TINY["attention"]),
                       data=DataConfig(str(shapes), min_count=1),
                       optim=OptimConfig(average_last=2),
                       train=TrainConfig(epochs=3, batch_size=8))  # fmt: skip
    train(config, tmp_path / "run")
    exported = load_checkpoint(tmp_path / "run").model.state_dict()
    for name, value in exported.items():  # epochs 1 and 2, not epoch 0
        torch.testing.assert_close(value, (seen[1][name] + seen[2][name]) / 2)
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    exported_row = json.loads((tmp_path / "run" / "config.json").read_text())["metrics"]
    assert exported_row == rows[-1]  # the final mean, though val CIDEr fell
    assert exported_row["val/CIDEr"] == pytest.approx(0.7)
    assert [row.get("averaged_epochs") for row in rows] == [None, 1, 2]


def test_accumulating_two_half_batches_is_one_step_on_the_whole_batch(tmp_path):
    batch = _batch(8)
    whole = _fit(tmp_path, [batch])
    accumulated = _fit(tmp_path, _halves(batch), accumulate=2)
    assert len(whole["grads"]) == len(accumulated["grads"]) == 1
    torch.testing.assert_close(accumulated["grads"][0], whole["grads"][0])
    # Without accumulation the halves are two steps, each on its own half's gradient.
    stepped = _fit(tmp_path, _halves(batch))
    assert len(stepped["grads"]) == 2
    assert not torch.allclose(stepped["grads"][0], whole["grads"][0])


def test_clipping_by_value_clamps_and_by_norm_rescales_the_gradient(tmp_path):
    batch = _batch(8)
    free = _fit(tmp_path, [batch])["grads"][0]
    limit = free.abs().max().item() / 2  # half the largest entry: some are clamped
    clamped = _fit(tmp_path, [batch], grad_clip=limit, grad_clip_algorithm="value")["grads"][0]
    torch.testing.assert_close(clamped, free.clamp(-limit, limit))
    assert (free.abs() > limit).any()
    limit = free.norm().item() / 2
    rescaled = _fit(tmp_path, [batch], grad_clip=limit, grad_clip_algorithm="norm")["grads"][0]
    torch.testing.assert_close(rescaled, free * (limit / free.norm()))


def test_caption_weights_count_a_caption_as_often_as_its_weight(tmp_path):
    batch = _batch(4)
    weighted = _fit(tmp_path, [{**batch, "weights": torch.tensor([2.0, 0.0, 1.0, 1.0])}])
    repeated = _fit(tmp_path, [{k: v if v is None else v[[0, 0, 2, 3]] for k, v in batch.items()}])
    torch.testing.assert_close(weighted["grads"][0], repeated["grads"][0])
    assert not torch.allclose(weighted["grads"][0], _fit(tmp_path, [batch])["grads"][0])


def test_without_unk_targets_the_loss_leaves_out_the_unk_targets_only(tmp_path):
    batch = _batch(4)
    batch["tokens"][0, 2] = batch["tokens"][3, 1] = Vocabulary.unk_id  # read as inputs too
    seen = _fit(tmp_path, [batch], unk_targets=False)
    model = _tiny_model()  # the model `_fit` trained, before its step
    tokens, targets = batch["tokens"], batch["tokens"][:, 1:]
    logits = model(batch["pooled"], None, tokens[:, :-1])
    kept = targets != Vocabulary.unk_id
    torch.nn.functional.cross_entropy(logits[kept], targets[kept]).backward()
    expected = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    torch.testing.assert_close(seen["grads"][0], expected)
    assert not torch.allclose(_fit(tmp_path, [batch])["grads"][0], expected)


def test_bf16_mixed_runs_the_model_under_bf16_autocast_and_keeps_float32_weights(tmp_path):
    batch = _batch(8)
    full = _fit(tmp_path, [batch])
    mixed = _fit(tmp_path, [batch], precision="bf16-mixed")
    assert full["dtypes"] == {torch.float32} and mixed["dtypes"] == {torch.bfloat16}
    assert mixed["weights"].dtype == mixed["grads"][0].dtype == torch.float32
    # The same gradient up to bf16 rounding (8 bits of mantissa), but not bit for bit.
    torch.testing.assert_close(mixed["grads"][0], full["grads"][0], rtol=0.1, atol=0.02)
    assert not torch.equal(mixed["grads"][0], full["grads"][0])


@pytest.mark.slow
def test_a_short_run_with_adamw_plateau_scheduled_sampling_and_weighted_captions(shapes, tmp_path):
    """Features cached by the test above: same images, encoder and grid."""
    tiny = {"d_model": 16, "n_heads": 2, "n_layers": 1, "d_ff": 32}
    config = RunConfig(model="transformer", model_args=tiny,
                       data=DataConfig(str(shapes), min_count=1),
                       optim=OptimConfig(lr=1e-3, optimizer="adamw", weight_decay=0.01,
                                         schedule="plateau", warmup_steps=5, plateau_patience=0,
                                         scheduled_sampling=0.4, ss_start_epoch=1,
                                         ss_ramp_epochs=2, caption_weights="consensus",
                                         unk_targets=False),
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
        ("--resize", "stretch", "unknown resize 'stretch' (crop or squash)"),
        ("--schedule", "noam", "schedule noam needs warmup_steps > 0 (the step of its peak)"),
        ("--plateau-factor", "1", "plateau_factor must be in (0, 1), not 1.0"),
        ("--lr-gamma", "1.5", "lr_gamma must be in (0, 1], not 1.5"),
        ("--caption-weights", "cider", "unknown caption_weights 'cider' (uniform or consensus)"),
    ],
)
def test_bad_training_choices_are_one_line(tmp_path, capsys, option, value, message):
    argv = ["train", "--data", str(tmp_path), "--out", str(tmp_path / "run"), option, value]
    assert main(argv) == 1
    assert capsys.readouterr().err.strip() == f"error: {message}"


def test_bad_clip_algorithm_is_an_error():
    with pytest.raises(CaptionkitError, match="unknown grad_clip_algorithm 'max'"):
        OptimConfig(grad_clip_algorithm="max")


def test_grouped_batches_give_the_loss_of_the_same_captions_batched_per_caption():
    """`train.group_images`: a batch of each image's features once with `image_index` has the
    loss (cross-entropy and attention regulariser) of its features repeated per caption."""
    torch.manual_seed(0)
    model = create_model("attention", vocab_size=10, feature_dim=4, dropout=0.0,
                         feature_dropout=0.0, word_dropout=0.0, **TINY["attention"])  # fmt: skip
    module = CaptioningModule(model, Vocabulary(list("abcdef")), OptimConfig(), {},
                              DecodingOptions())  # fmt: skip
    module.log = lambda *args, **kwargs: None  # no trainer to log to
    module.trainer = type("T", (), {"world_size": 1})()
    generator = torch.Generator().manual_seed(1)
    tokens = torch.randint(4, 10, (5, 6), generator=generator)
    tokens[:, 0], tokens[:, -1], tokens[3, 3:] = 1, 2, 0  # <bos> .. <eos>; one caption shorter
    tokens[3, 3] = 2
    index = torch.tensor([1, 0, 1, 1, 0])
    pooled, grid = torch.randn(2, 4, generator=generator), torch.randn(2, 3, 4, generator=generator)
    grouped = {"pooled": pooled, "grid": grid, "tokens": tokens, "image_index": index}
    per_caption = {"pooled": pooled[index], "grid": grid[index], "tokens": tokens}
    torch.testing.assert_close(module.training_step(grouped, 0),
                               module.training_step(per_caption, 0), atol=1e-6, rtol=0)  # fmt: skip


def test_group_images_trains_on_whole_images_and_says_buckets_do_not_apply(shapes, tmp_path):
    config = RunConfig(model="attention", model_args=TINY["attention"],
                       data=DataConfig(str(shapes), min_count=1),
                       train=TrainConfig(epochs=1, batch_size=10, group_images=True,
                                         bucket_batches=5))  # fmt: skip
    with pytest.warns(UserWarning, match="bucket_batches 5 does not apply"):
        train(config, tmp_path / "run")
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    splits = json.loads((tmp_path / "run" / "splits.json").read_text())
    images = list(splits.values()).count("train")
    assert rows[0]["step"] == images // 2  # 2 whole images (10 captions) a batch, last dropped


@pytest.mark.parametrize("name", ["attention", "updown"])
@pytest.mark.parametrize("weighted", [False, True])
def test_logits_of_the_loss_steps_only_give_the_loss_and_gradients_of_all(name, weighted):
    """The attention decoders compute the logits of just the steps the loss reads (`steps`):
    the same logits there, and the same loss and gradients as all steps' logits, with the same
    dropout masks (dropout runs over all steps first)."""
    model = create_model(name, vocab_size=30, feature_dim=8)  # train mode: dropout on
    assert model.selects_steps
    pooled, grid = torch.randn(4, 8), torch.randn(4, 5, 8)
    tokens = torch.tensor([[1, 5, 6, 7, 2, 0], [1, 8, 2, 0, 0, 0], [1, 9, 9, 4, 6, 2],
                           [1, 3, 2, 0, 0, 0]])  # fmt: skip
    targets = tokens[:, 1:].masked_fill(tokens[:, 1:] == 3, 0)  # an <unk> target left out
    steps = loss_steps(model, targets)
    assert steps["steps"].sum() == (targets != 0).sum() == 12
    weights = torch.tensor([1.0, 0.5, 2.0, 1.0]) if weighted else None
    results = []
    for extra in ({}, steps):
        torch.manual_seed(3)
        model.zero_grad()
        logits = model(pooled, grid, tokens[:, :-1], **extra)
        loss = caption_loss(logits, targets, 0.1, weights, **extra)
        loss.backward()
        results.append((logits, loss, [p.grad.clone() for p in model.parameters()]))
    (full, loss, grads), (picked, picked_loss, picked_grads) = results
    assert picked.shape == (12, 30)
    assert torch.allclose(picked, full[steps["steps"]], atol=1e-6)
    assert picked_loss.item() == pytest.approx(loss.item(), rel=1e-6)
    for a, b in zip(picked_grads, grads):
        assert torch.allclose(a, b, atol=1e-6)
