"""Self-critical sequence training: rewards, baselines and loss by hand, the options, and a
short SCST phase that improves an under-trained model on `shapes`."""

import json
import math

import numpy as np
import pytest
import torch
from pycocoevalcap.cider.cider import Cider

import captionkit.training.scst as scst
from captionkit.cli import main
from captionkit.data.shapes import make_shapes
from captionkit.data.vocab import Vocabulary
from captionkit.decoding import DecodingOptions, DecodingResult
from captionkit.evaluation.evaluate import evaluate_run
from captionkit.models import MODELS, create_model
from captionkit.training.config import (
    DataConfig,
    EncoderConfig,
    OptimConfig,
    RunConfig,
    ScstConfig,
    TrainConfig,
)
from captionkit.training.scst import (
    ScstModule,
    ScstReward,
    mean_of_others,
    scst_loss,
    sequence_logprobs,
)
from captionkit.training.train import train

from conftest import TINY

REFS = {"a": ["Red circle."], "b": ["blue square"]}
# By hand, with <eos> a word: two images, so idf = log 2 for an n-gram of one image's references
# and 0 for <eos> (in both). A copy of the reference matches its 1-, 2- and 3-grams exactly
# (cosine 1) and has no 4-gram: 10 x (1 + 1 + 1 + 0) / 4. "red <eos>": unigrams {red: log 2,
# <eos>: 0} against {red, circle: log 2, <eos>: 0}: cosine log2^2 / (log 2 x sqrt(2) log 2);
# no shared bigram; 2 words against 3: Gaussian penalty exp(-1 / (2 x 6^2)).
COPY = 7.5
RED = 10 * (1 / math.sqrt(2)) / 4 * math.exp(-1 / 72)


def test_reward_is_cider_d_with_eos_as_a_word_by_hand_and_as_pycocoevalcap():
    reward = ScstReward(REFS)
    got = reward(["red circle", "red", "blue square", "", "red circle"], list("aaaab"))
    np.testing.assert_allclose(got, [COPY, RED, 0.0, 0.0, 0.0], atol=1e-9)
    # pycocoevalcap's Cider on the same words (df from the references it scores: the corpus).
    gts = {k: [" ".join([*scst.tokenize(c), "<eos>"]) for c in v] for k, v in REFS.items()}
    _, expected = Cider().compute_score(gts, {"a": ["red <eos>"], "b": ["square blue <eos>"]})
    np.testing.assert_allclose(reward(["red", "square blue"], ["a", "b"]), expected, atol=1e-9)
    # The BLEU-4 of a copy (that has 4-grams) is 1: the weighted mix adds 0.5.
    refs = {**REFS, "c": ["a big red circle"]}
    plain = ScstReward(refs)(["a big red circle", "red"], ["c", "a"])
    mixed = ScstReward(refs, bleu_weight=0.5)(["a big red circle", "red"], ["c", "a"])
    assert mixed[0] == pytest.approx(plain[0] + 0.5, abs=1e-6)
    assert 0 < mixed[1] - plain[1] < 0.01  # BLEU-4 of one word: pycocoevalcap's tiny smoothing


def test_mean_of_others_baseline_by_hand():
    rewards = torch.tensor([[7.5, RED, 0.0], [1.0, 2.0, 6.0]])
    expected = [[RED / 2, 3.75, (7.5 + RED) / 2], [4.0, 3.5, 1.5]]
    torch.testing.assert_close(mean_of_others(rewards), torch.tensor(expected))


def _module(k: int, baseline: str) -> tuple[ScstModule, Vocabulary]:
    vocab = Vocabulary(["red", "circle", "blue", "square"])
    model = create_model("show_tell", vocab_size=len(vocab), feature_dim=4, embed_dim=8,
                         hidden_dim=8, dropout=0.0)  # fmt: skip
    greedy = DecodingOptions(beam_size=1)
    module = ScstModule(model, vocab, OptimConfig(objective="scst"), {}, greedy,
                        scst=ScstConfig(samples=k, baseline=baseline), reward=ScstReward(REFS),
                        max_length=5)  # fmt: skip
    return module, vocab


def test_greedy_baseline_is_the_reward_of_each_images_greedy_caption(monkeypatch):
    module, vocab = _module(3, "greedy")
    greedy = {"a": [vocab.stoi["red"]], "b": [vocab.stoi["red"], vocab.stoi["circle"]]}
    monkeypatch.setattr(scst, "decode", lambda model, pooled, grid, options: [
        [DecodingResult(greedy[k], 0.0)] for k in "ab"])  # fmt: skip
    rewards = torch.zeros(2, 3)
    baseline = module._baseline(torch.zeros(2, 4), None, ["a", "b"], rewards)
    torch.testing.assert_close(baseline, torch.tensor([[RED] * 3, [0.0] * 3]))


def test_loss_is_minus_advantage_times_sequence_logprob_masked_after_eos():
    # <bos> 4 5 <eos> <pad> and <bos> 6 <eos> <pad> <pad>: 3 and 2 tokens scored, <eos> included.
    tokens = torch.tensor([[1, 4, 5, 2, 0], [1, 6, 2, 0, 0]])
    logits = torch.randn(2, 4, 8, requires_grad=True)
    logp, entropy = sequence_logprobs(logits, tokens)
    full = logits.detach().clone()
    full[..., :2] = -torch.inf  # <pad> and <bos> are never sampled
    full = full.log_softmax(-1)
    expected = [full[0, 0, 4] + full[0, 1, 5] + full[0, 2, 2], full[1, 0, 6] + full[1, 1, 2]]
    torch.testing.assert_close(logp.sum(1), torch.stack(expected))
    assert logp[0, 3] == logp[1, 2] == logp[1, 3] == 0 and entropy[1, 2:].abs().sum() == 0
    advantage = torch.tensor([2.0, -1.0])
    loss = scst_loss(logp, advantage)
    torch.testing.assert_close(loss, -(2.0 * expected[0] - expected[1]) / 2)
    loss.backward()
    assert logits.grad[1, 2:].abs().sum() == 0  # nothing after the second caption's <eos>
    # A gradient step makes the caption with a positive advantage more likely, the other less.
    stepped = sequence_logprobs(logits.detach() - 0.1 * logits.grad, tokens)[0].sum(1)
    assert stepped[0] > expected[0] and stepped[1] < expected[1]


def test_objective_scst_needs_init_and_takes_a_lower_default_lr(tmp_path, capsys):
    code = main(["train", "--data", str(tmp_path), "--out", str(tmp_path / "r"),
                 "--objective", "scst"])  # fmt: skip
    assert code == 1
    assert "error: --objective scst fine-tunes a trained model: give --init RUN_DIR" in (
        capsys.readouterr().err
    )
    assert OptimConfig().lr == 5e-4 and OptimConfig(objective="scst").lr == 5e-5
    assert OptimConfig(objective="scst", lr=1e-4).lr == 1e-4
    config = RunConfig(optim=OptimConfig(objective="scst"), scst=ScstConfig(baseline="greedy"))
    assert RunConfig.from_dict(config.to_dict()) == config
    with pytest.raises(Exception, match="scst.samples must be >= 2"):
        ScstConfig(samples=1)  # the mean of the others needs others
    assert ScstConfig(samples=1, baseline="greedy").samples == 1


def test_cli_objective_over_an_xe_config_takes_the_scst_lr_unless_given(tmp_path, monkeypatch):
    import captionkit.training.train as training

    seen = []
    monkeypatch.setattr(training, "train", lambda config, run_dir, resume=False: seen.append(
        config))  # fmt: skip
    xe = tmp_path / "xe.yaml"
    xe.write_text("data: {data: d}\noptim: {lr: 5.0e-4}\n")
    sc = tmp_path / "sc.yaml"
    sc.write_text("data: {data: d}\noptim: {objective: scst}\nscst: {samples: 3}\n")
    own = tmp_path / "own.yaml"
    own.write_text("data: {data: d}\noptim: {objective: scst, lr: 2.0e-5}\n")
    out = ["--out", str(tmp_path / "r"), "--init", "x"]
    for argv in (["--config", str(xe), "--objective", "scst"],
                 ["--config", str(xe), "--objective", "scst", "--lr", "1e-4"],
                 ["--data", "d", "--objective", "scst", "--scst-baseline", "greedy"],
                 ["--config", str(sc)], ["--config", str(own)],
                 ["--config", str(own), "--objective", "scst"],
                 ["--data", "d", "--objective", "scst", "--schedule", "cosine"]):  # fmt: skip
        assert main(["train", *argv, *out]) == 0
    assert [c.optim.lr for c in seen] == [5e-5, 1e-4, 5e-5, 5e-5, 2e-5, 2e-5, 5e-5]
    assert [c.optim.objective for c in seen] == ["scst"] * 7
    # The best preset's step decay is for its cross-entropy epochs: SCST runs at a constant rate
    # unless the command line gives a schedule.
    assert [c.optim.schedule for c in seen[2:]] == ["constant"] * 4 + ["cosine"]
    assert seen[2].optim.average_last == 0  # nor the mean of its last epochs
    assert (seen[2].scst.baseline, seen[3].scst.samples) == ("greedy", 3)


def _greedy_cider(run, data) -> float:
    """Mean greedy CIDEr over the val and test images."""
    greedy = DecodingOptions(beam_size=1)
    scores = [evaluate_run(run, data, split=s, options=greedy, meteor=False).metrics["CIDEr"]
              for s in ("val", "test")]  # fmt: skip
    return sum(scores) / 2


@pytest.mark.slow
def test_a_short_scst_phase_improves_an_under_trained_model(tmp_path):
    make_shapes(tmp_path / "shapes", n_images=150, seed=1, image_size=64)
    tiny = {"embed_dim": 32, "hidden_dim": 64, "dropout": 0.0}
    data = DataConfig(str(tmp_path / "shapes"), min_count=1)
    xe = RunConfig(model="show_tell", model_args=tiny, data=data, optim=OptimConfig(lr=3e-3),
                   train=TrainConfig(epochs=4, batch_size=16))  # fmt: skip
    train(xe, tmp_path / "xe")
    sc = RunConfig(model="show_tell", model_args=tiny, data=data,
                   optim=OptimConfig(objective="scst", lr=2e-4),
                   train=TrainConfig(epochs=3, batch_size=20, init=str(tmp_path / "xe")),
                   scst=ScstConfig(baseline="greedy"))  # fmt: skip
    best = train(sc, tmp_path / "scst")
    assert {"train/reward", "train/baseline", "train/entropy", "train/sample_length"} <= set(best)
    before, after = _greedy_cider(tmp_path / "xe", data.data), _greedy_cider(tmp_path / "scst",
                                                                             data.data)  # fmt: skip
    assert after > before + 0.03, (before, after)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_a_step_of_every_decoder_gives_gradients(name, monkeypatch):
    vocab = Vocabulary(["red", "circle", "blue", "square"])
    model = create_model(name, vocab_size=len(vocab), feature_dim=4, **TINY[name])
    greedy = DecodingOptions(beam_size=1)
    module = ScstModule(model, vocab, OptimConfig(objective="scst"), {}, greedy,
                        scst=ScstConfig(samples=4), reward=ScstReward(REFS),
                        max_length=5)  # fmt: skip
    logged = {}
    monkeypatch.setattr(module, "log", lambda key, value, **_: logged.update(
        {key: float(torch.as_tensor(value).detach())}))  # fmt: skip
    torch.manual_seed(0)
    batch = {"pooled": torch.randn(2, 4), "grid": torch.randn(2, 3, 4), "keys": ["a", "b"]}
    loss = module.training_step(batch, 0)
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    assert model.training  # back in training mode after the eval-mode passes
    assert 1 <= logged["train/sample_length"] <= 6 and logged["train/entropy"] > 0
    # (The mean-of-others baseline itself: test_mean_of_others_baseline_by_hand.)


@pytest.mark.slow
def test_scst_with_a_fine_tuned_encoder_saves_the_encoder(tmp_path):
    make_shapes(tmp_path / "shapes", n_images=20, seed=1, image_size=48)
    tiny = {"hidden_dim": 16, "attention_dim": 8, "dropout": 0.0}
    data = DataConfig(str(tmp_path / "shapes"), min_count=1)
    train(RunConfig(model="attention", model_args=tiny, data=data,
                    train=TrainConfig(epochs=1, batch_size=16)), tmp_path / "xe")  # fmt: skip
    config = RunConfig(model="attention", model_args=tiny, data=data,
                       encoder=EncoderConfig(finetune=True, finetune_blocks=1),
                       optim=OptimConfig(objective="scst"),
                       train=TrainConfig(epochs=1, batch_size=8, init=str(tmp_path / "xe"),
                                         workers=0),
                       scst=ScstConfig(samples=2))  # fmt: skip
    best = train(config, tmp_path / "scst")
    assert best["step"] > 0 and "train/reward" in best
    saved = json.loads((tmp_path / "scst" / "config.json").read_text())
    assert saved["encoder"]["finetuned"] and (tmp_path / "scst" / "encoder.safetensors").exists()


@pytest.mark.slow
def test_scst_epochs_adds_an_scst_phase_and_keeps_the_better_model(tmp_path, capsys):
    make_shapes(tmp_path / "shapes", n_images=60, seed=2, image_size=48)
    tiny = {"embed_dim": 16, "hidden_dim": 32, "dropout": 0.0}
    config = RunConfig(model="show_tell", model_args=tiny,
                       data=DataConfig(str(tmp_path / "shapes"), min_count=1),
                       optim=OptimConfig(lr=3e-3),
                       train=TrainConfig(epochs=2, batch_size=16, scst_epochs=2),
                       scst=ScstConfig(lr=2e-4, samples=3))  # fmt: skip
    run = tmp_path / "run"
    best = train(config, run)
    xe_rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    scst_rows = [json.loads(x) for x in (run / "scst" / "metrics.jsonl").read_text().splitlines()]
    assert len(xe_rows) == 2 and len(scst_rows) == 2
    xe_best = max(r["val/CIDEr"] for r in xe_rows)
    assert best["val/CIDEr"] == max(xe_best, *(r["val/CIDEr"] for r in scst_rows))
    scst_won = best["val/CIDEr"] > xe_best
    # The SCST phase exports a model only when it beats the cross-entropy one on val.
    assert (run / "scst" / "model.safetensors").exists() == scst_won
    saved = json.loads((run / "config.json").read_text())
    assert (saved.get("phase") == "scst") == scst_won
    assert saved["run"]["train"]["scst_epochs"] == 2
    if scst_won:
        kept = (run / "model.safetensors").read_bytes()
        assert kept == (run / "scst" / "model.safetensors").read_bytes()
    scst_config = RunConfig.from_yaml(run / "scst" / "config.yaml")
    assert scst_config.optim.objective == "scst" and scst_config.optim.lr == 2e-4
    assert scst_config.train.init == str(run) and scst_config.train.epochs == 2
    assert "kept the" in capsys.readouterr().out
