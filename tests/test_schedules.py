"""Optimizers, learning-rate schedules and scheduled sampling: against torch's own schedulers,
the closed formulas, and Lightning (steps, validations, checkpoint save and resume)."""

import json
import math

import lightning as L
import pytest
import torch

from captionkit.data.vocab import Vocabulary
from captionkit.decoding import DecodingOptions
from captionkit.models import create_model
from captionkit.training.config import OptimConfig
from captionkit.training.module import CaptioningModule
from captionkit.training.scheduled_sampling import (
    draw_model_tokens,
    mix_inputs,
    scheduled_sampling_inputs,
    ss_probability,
)
from captionkit.training.schedules import make_optimizer, make_schedulers

PAD, BOS, EOS = Vocabulary.pad_id, Vocabulary.bos_id, Vocabulary.eos_id


def step_lrs(optim: OptimConfig, steps: int, total_steps: int = 0, epochs: int = 1) -> list:
    """The learning rate of each of `steps` optimizer steps, as Lightning would step the
    schedulers of a step-interval schedule."""
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = make_optimizer(optim, [{"params": [param]}])
    schedulers = [s["scheduler"] for s in make_schedulers(optim, optimizer, total_steps, epochs)]
    seen = []
    for _ in range(steps):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        for scheduler in schedulers:
            scheduler.step()
    return seen


def torch_lrs(scheduler_cls, steps: int, lr: float, **kwargs) -> list:
    """The learning rate of each of `steps` steps of torch's `scheduler_cls`."""
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    scheduler = scheduler_cls(optimizer, **kwargs)
    seen = []
    for _ in range(steps):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return seen


# --- schedules -----------------------------------------------------------------------------------


def test_step_schedule_is_step_lr_stepped_every_epoch():
    optim = OptimConfig(lr=0.2, schedule="step", lr_gamma=0.5, lr_step_epochs=2)
    ours = step_lrs(optim, 24, total_steps=24, epochs=8)  # 3 steps per epoch
    per_epoch = torch_lrs(torch.optim.lr_scheduler.StepLR, 8, 0.2, step_size=2, gamma=0.5)
    assert ours == pytest.approx([per_epoch[s // 3] for s in range(24)])
    assert ours[-1] == pytest.approx(0.2 * 0.5**3)


def test_step_schedule_after_a_warmup_multiplies_both():
    optim = OptimConfig(lr=1.0, schedule="step", lr_gamma=0.1, lr_step_epochs=1, warmup_steps=4)
    ours = step_lrs(optim, 6, total_steps=6, epochs=3)  # 2 steps per epoch
    assert ours == pytest.approx([0.25, 0.5, 0.075, 0.1, 0.01, 0.01])


def test_cosine_after_warmup_is_cosine_annealing_lr():
    optim = OptimConfig(lr=0.1, schedule="cosine", warmup_steps=3)
    ours = step_lrs(optim, 14, total_steps=13)
    assert ours[:3] == pytest.approx([0.1 / 3, 0.2 / 3, 0.1])
    cosine = torch_lrs(torch.optim.lr_scheduler.CosineAnnealingLR, 11, 0.1, T_max=10)
    assert ours[3:] == pytest.approx(cosine, abs=1e-12)
    assert ours[13] == pytest.approx(0.0, abs=1e-12)  # the last step, and any after it


def test_noam_peaks_at_lr_at_the_end_of_its_warmup():
    optim = OptimConfig(lr=0.01, schedule="noam", warmup_steps=4)
    ours = step_lrs(optim, 12)
    expected = [0.01 * min((s + 1) / 4, math.sqrt(4 / (s + 1))) for s in range(12)]
    assert ours == pytest.approx(expected)
    assert max(ours) == ours[3] == pytest.approx(0.01)
    assert ours[:4] == pytest.approx([0.0025, 0.005, 0.0075, 0.01])
    assert ours[11] == pytest.approx(0.01 * math.sqrt(4 / 12))  # 1/sqrt(step) after it


def plateau_run(optim: OptimConfig, scores: list, steps_per_epoch: int) -> list:
    """Learning rate of each step of a run validated after every `steps_per_epoch` steps with
    the val CIDEr `scores`, stepping the schedulers as Lightning does."""
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = make_optimizer(optim, [{"params": [param]}])
    configs = make_schedulers(optim, optimizer)
    seen = []
    for score in scores:
        for _ in range(steps_per_epoch):
            seen.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            [c["scheduler"].step() for c in configs if c["interval"] == "step"]
        [c["scheduler"].step(score) for c in configs if c["interval"] == "epoch"]
    return seen


def test_plateau_cuts_after_patience_bad_validations_down_to_min_lr():
    optim = OptimConfig(lr=0.1, schedule="plateau", plateau_factor=0.5, plateau_patience=1,
                        min_lr=0.03)  # fmt: skip
    seen = plateau_run(optim, [1, 2, 2, 2, 2, 2, 2, 2, 2], steps_per_epoch=2)
    per_epoch = seen[::2]
    assert seen[1::2] == per_epoch  # constant within an epoch
    # Best 2 at epoch 1; epochs 2, 3 are not better: the 2nd bad one (> patience) cuts.
    assert per_epoch == pytest.approx([0.1, 0.1, 0.1, 0.1, 0.05, 0.05, 0.03, 0.03, 0.03])
    # Torch's own, on the per-epoch scores: the same.
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    reference = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, "max", 0.5, 1, min_lr=0.03)
    expected = []
    for score in [1, 2, 2, 2, 2, 2, 2, 2, 2]:
        expected.append(optimizer.param_groups[0]["lr"])
        reference.step(score)
    assert per_epoch == pytest.approx(expected)


def test_a_plateau_cut_during_the_warmup_is_kept():
    """Warmup 8 steps, 3 steps per epoch, patience 0: the validation after epoch 1 cuts by half
    while the warmup still runs; the warmup goes on from there, to half of `lr`."""
    optim = OptimConfig(lr=0.8, schedule="plateau", warmup_steps=8, plateau_factor=0.5,
                        plateau_patience=0)  # fmt: skip
    seen = plateau_run(optim, [1, 1, 2, 3], steps_per_epoch=3)
    expected = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.35, 0.4, 0.4, 0.4, 0.4, 0.4]
    assert seen == pytest.approx(expected)


def test_plateau_without_warmup_has_only_the_plateau_scheduler():
    optimizer = make_optimizer(OptimConfig(), [{"params": [torch.nn.Parameter(torch.zeros(1))]}])
    configs = make_schedulers(OptimConfig(schedule="plateau", warmup_steps=1), optimizer)
    assert [(type(c["scheduler"]).__name__, c["interval"]) for c in configs] == [
        ("ReduceLROnPlateau", "epoch")]  # fmt: skip
    assert configs[0]["monitor"] == "val/CIDEr"


# --- optimizers ----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["adam", "adamw"])
def test_adam_and_adamw_differ_by_decoupled_decay_only(kind):
    """One step from w with gradient g: Adam's first update is lr * g' / (|g'| + eps) per weight;
    Adam adds the decay to the gradient (g' = g + wd * w), AdamW shrinks the weight instead."""
    lr, wd, eps = 0.1, 0.5, 1e-8
    w = torch.tensor([1.0, -2.0, 0.5])
    g = torch.tensor([0.3, 0.1, -0.4])
    param = torch.nn.Parameter(w.clone())
    optimizer = make_optimizer(OptimConfig(optimizer=kind, lr=lr, weight_decay=wd),
                               [{"params": [param]}])  # fmt: skip
    param.grad = g.clone()
    optimizer.step()
    if kind == "adam":
        g = g + wd * w
        expected = w - lr * g / (g.abs() + eps)
    else:
        expected = w * (1 - lr * wd) - lr * g / (g.abs() + eps)
    assert type(optimizer) is {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[kind]
    assert param.detach() == pytest.approx(expected, abs=1e-6)


def test_the_optimizer_is_fused_on_a_cpu_and_steps_as_the_loop_does():
    """The fused kernel takes the per-parameter loop's steps (to float32 rounding)."""
    torch.manual_seed(0)
    weights = [torch.randn(7, 5), torch.randn(5)]
    fused = [torch.nn.Parameter(w.clone()) for w in weights]
    looped = [torch.nn.Parameter(w.clone()) for w in weights]
    optim = OptimConfig(lr=0.01, weight_decay=0.1)
    optimizer = make_optimizer(optim, [{"params": fused}])
    loop = torch.optim.Adam(looped, lr=0.01, weight_decay=0.1, foreach=False)
    assert optimizer.defaults["fused"]
    for _ in range(5):
        grads = [torch.randn_like(w) for w in weights]
        for params, opt in ((fused, optimizer), (looped, loop)):
            for param, grad in zip(params, grads):
                param.grad = grad.clone()
            opt.step()
    for a, b in zip(fused, looped):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)


def test_encoder_group_keeps_its_own_lr_under_the_schedule():
    decoder, encoder = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    optim = OptimConfig(lr=0.1, schedule="cosine", warmup_steps=2, optimizer="adamw")
    optimizer = make_optimizer(optim, [{"params": [decoder]}, {"params": [encoder], "lr": 0.01}])
    (config,) = make_schedulers(optim, optimizer, total_steps=10)
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([0.05, 0.005])
    for _ in range(6):
        optimizer.step()
        config["scheduler"].step()
    lrs = [g["lr"] for g in optimizer.param_groups]
    assert lrs[1] == pytest.approx(lrs[0] / 10) and 0 < lrs[0] < 0.1


# --- scheduled sampling --------------------------------------------------------------------------


def test_sampling_probability_ramps_per_epoch():
    ramp = OptimConfig(scheduled_sampling=0.3, ss_start_epoch=2, ss_ramp_epochs=3)
    assert [ss_probability(ramp, e) for e in range(7)] == pytest.approx(
        [0, 0, 0.1, 0.2, 0.3, 0.3, 0.3])  # fmt: skip
    at_once = OptimConfig(scheduled_sampling=0.25, ss_start_epoch=1, ss_ramp_epochs=0)
    assert [ss_probability(at_once, e) for e in range(3)] == [0.0, 0.25, 0.25]
    assert {ss_probability(OptimConfig(), e) for e in range(5)} == {0.0}


INPUTS = torch.tensor([[BOS, 5, 6, 7, EOS, PAD], [BOS, 8, EOS, PAD, PAD, PAD]])  # [B=2, T=6]
DRAWN = torch.arange(100, 112).view(2, 6)  # drawn[:, t]: the model's token for inputs[:, t+1]


def test_probability_zero_leaves_the_input_and_one_replaces_every_word():
    assert torch.equal(mix_inputs(INPUTS, DRAWN, 0.0), INPUTS)
    expected = torch.tensor([[BOS, 100, 101, 102, EOS, PAD], [BOS, 106, EOS, PAD, PAD, PAD]])
    assert torch.equal(mix_inputs(INPUTS, DRAWN, 1.0), expected)


def test_each_word_is_replaced_with_the_probability():
    inputs = torch.full((400, 26), 9)  # [B, T]
    inputs[:, 0], inputs[:, -1] = BOS, EOS
    drawn = torch.full_like(inputs, 4)
    mixed = mix_inputs(inputs, drawn, 0.3, torch.Generator().manual_seed(0))
    replaced = (mixed == 4).float()
    assert replaced[:, 1:-1].mean().item() == pytest.approx(0.3, abs=0.01)  # 10,000 words
    assert replaced[:, [0, -1]].sum() == 0


def test_model_tokens_follow_the_distribution_without_special_tokens():
    logits = torch.full((2, 3, 10), -20.0)  # [B, T, V]
    logits[..., [PAD, BOS, EOS]] = 30.0  # the most likely, but never drawn
    logits[0, :, 5] = 10.0  # row 0: token 5 almost surely
    drawn = draw_model_tokens(logits, torch.Generator().manual_seed(0))
    assert drawn.shape == (2, 3) and (drawn[0] == 5).all()
    assert not torch.isin(drawn, torch.tensor([PAD, BOS, EOS])).any()
    even = torch.zeros(4000, 1, 6)  # uniform over tokens 3, 4, 5 once the specials are out
    counts = torch.bincount(draw_model_tokens(even).flatten(), minlength=6)
    assert counts[:3].sum() == 0 and (counts[3:] - 4000 / 3).abs().max() < 150


def test_scheduled_sampling_inputs_are_the_model_tokens_without_gradient():
    torch.manual_seed(0)
    model = create_model("transformer", vocab_size=12, feature_dim=8, d_model=16, n_heads=2,
                         n_layers=1, d_ff=16)  # fmt: skip
    pooled, grid = torch.randn(2, 8), torch.randn(2, 4, 8)
    inputs = INPUTS.clamp(max=11)  # [2, 6], within the vocabulary
    assert scheduled_sampling_inputs(model, pooled, grid, inputs, 0.0) is inputs  # no pass
    with torch.no_grad():
        model.head_bias[:] = -30.0
        model.head_bias[7] = 30.0  # every prediction: token 7
    mixed = scheduled_sampling_inputs(model, pooled, grid, inputs, 1.0)
    expected = torch.tensor([[BOS, 7, 7, 7, EOS, PAD], [BOS, 7, EOS, PAD, PAD, PAD]])
    assert torch.equal(mixed, expected) and not mixed.requires_grad
    assert all(p.grad is None for p in model.parameters())


# --- Lightning: the schedulers as it steps them, and its checkpoints -- -------------------------


class ScriptedCIDEr(CaptioningModule):
    """The real training step and optimizers; validation 'scores' the next of `scores`, and
    every training step records the learning rate."""

    def __init__(self, optim: OptimConfig, scores: list):
        torch.manual_seed(0)
        model = create_model("show_tell", vocab_size=10, feature_dim=4, embed_dim=4, hidden_dim=4)
        vocab = Vocabulary(list("abcdef"))
        super().__init__(model, vocab, optim, {}, DecodingOptions())
        self.scores, self.lrs = scores, []

    def training_step(self, batch, batch_idx):
        self.lrs.append(self.optimizers().param_groups[0]["lr"])
        return super().training_step(batch, batch_idx)

    def validation_step(self, batch, batch_idx):
        pass

    def on_validation_epoch_end(self):
        self.log("val/CIDEr", float(self.scores[self.current_epoch]))


def fit(module, epochs: int, ckpt_path=None) -> L.Trainer:
    generator = torch.Generator().manual_seed(0)
    tokens = torch.tensor([[BOS, 5, 6, EOS], [BOS, 7, EOS, PAD]])
    batches = [{"pooled": torch.randn(2, 4, generator=generator), "grid": None, "tokens": tokens}
               for _ in range(3)]  # fmt: skip
    loader = torch.utils.data.DataLoader(batches, batch_size=None)
    trainer = L.Trainer(max_epochs=epochs, accelerator="cpu", logger=False,
                        enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0)  # fmt: skip
    trainer.fit(module, loader, loader, ckpt_path=ckpt_path)
    return trainer


def test_lightning_steps_warmup_and_plateau_and_resumes_them(tmp_path):
    optim = OptimConfig(lr=0.8, schedule="plateau", warmup_steps=8, plateau_factor=0.5,
                        plateau_patience=0, scheduled_sampling=0.5, ss_ramp_epochs=0)  # fmt: skip
    scores = [1, 1, 2, 3, 3, 3]
    module = ScriptedCIDEr(optim, scores)
    trainer = fit(module, epochs=4)
    assert module.lrs == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.35, 0.4, 0.4] + [0.4] * 3)
    trainer.save_checkpoint(tmp_path / "last.ckpt")
    saved = torch.load(tmp_path / "last.ckpt", weights_only=True)  # no pickled objects
    json.dumps(saved["lr_schedulers"])  # plain numbers and strings
    resumed = ScriptedCIDEr(optim, scores)
    fit(resumed, epochs=6, ckpt_path=tmp_path / "last.ckpt")
    # Epoch 3 scored 3 (the best); epoch 4 too: a bad one, so patience 0 cuts. A plateau
    # scheduler that forgot its best would have taken 3 for a gain; a warmup that forgot it was
    # over would have changed the learning rate.
    assert resumed.lrs == pytest.approx([0.4] * 3 + [0.2] * 3)
