"""Ensembles (#16): members' probabilities averaged at every step, against a brute-force
reference; an ensemble of one run, or of a run with itself, equals the run; members on different
encoders; runs with different tokenizers refused."""

import html
import itertools
import math

import pytest
import torch
from PIL import Image

from captionkit.data.vocab import Vocabulary
from captionkit.decoding import DecodingOptions, decode
from captionkit.decoding.ensemble import Ensemble
from captionkit.errors import CaptionkitError
from captionkit.models import create_model

from conftest import SHAPE_WORDS, write_images

EOS = Vocabulary.eos_id
SUPPRESSED = [Vocabulary.pad_id, Vocabulary.bos_id, Vocabulary.unk_id]
STRATEGIES = [
    {"beam_size": 1},
    {"beam_size": 3, "n_best": 3},
    {"beam_size": 4, "beam_groups": 2, "n_best": 4},
    {"sample": True, "num_samples": 4, "seed": 3},
]


def tiny(seed: int, name: str = "show_tell", vocab_size: int = 8, feature_dim: int = 8, **kw):
    torch.manual_seed(seed)
    sizes = {"attention_dim": 8} if name == "attention" else {}
    if name == "transformer":
        sizes = {"d_model": 16, "n_heads": 2, "n_layers": 1, "d_ff": 16}
    else:
        sizes = {**sizes, "embed_dim": 8, "hidden_dim": 16}
    model = create_model(name, vocab_size=vocab_size, feature_dim=feature_dim, dropout=0.0,
                         **sizes, **kw)  # fmt: skip
    with torch.no_grad():  # sharper distributions: the members disagree
        for p in model.parameters():
            p.mul_(2.0)
    return model.eval()


def same(a, b) -> None:
    """Equal captions, scores equal to float error."""
    assert [[h.tokens for h in hyps] for hyps in a] == [[h.tokens for h in hyps] for hyps in b]
    scores = [h.score for hyps in a for h in hyps]
    assert scores == pytest.approx([h.score for hyps in b for h in hyps], abs=1e-4)


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("mean", ["probability", "log_probability"])
def test_ensemble_of_one_or_of_a_model_with_itself_is_the_model(strategy, mean):
    model = tiny(0, "attention")
    pooled, grid = torch.randn(3, 8), torch.randn(3, 5, 8)
    options = DecodingOptions(max_length=6, attention=True, ensemble_mean=mean, **strategy)
    alone = decode(model, pooled, grid, options)
    for members in ([model], [model, model]):
        together = decode(Ensemble(members, mean), [pooled] * len(members), [grid] * len(members),
                          options)  # fmt: skip
        same(together, alone)
        for a, b in zip(together, alone):  # the same model's maps, averaged: the same maps
            torch.testing.assert_close(torch.tensor(a[0].attention), torch.tensor(b[0].attention))


@torch.no_grad()
def combined_sequence_logprob(models, pooled, seq: list[int], mean: str) -> float:
    """log p(seq + <eos>) under the members' per-step mean, stepping each model by hand."""
    states = [m.init_state(p, None) for m, p in zip(models, pooled)]
    tokens, total = torch.tensor([Vocabulary.bos_id]), 0.0
    for tok in [*seq, EOS]:
        steps = [m.step(tokens, s) for m, s in zip(models, states)]
        states = [s.state for s in steps]
        logps = [torch.log_softmax(s.logits[0], -1) for s in steps]
        if mean == "probability":
            combined = torch.log(sum(lp.exp() for lp in logps) / len(logps))
        else:
            combined = sum(logps) / len(logps)
        combined[SUPPRESSED] = -math.inf
        total += float(torch.log_softmax(combined, -1)[tok])
        tokens = torch.tensor([tok])
    return total


@pytest.mark.parametrize("mean", ["probability", "log_probability"])
def test_ensemble_beam_search_matches_brute_force_over_the_mean(mean):
    models = [tiny(1), tiny(2, feature_dim=6)]  # members on different "encoders"
    pooled = [torch.randn(2, 8), torch.randn(2, 6)]
    options = DecodingOptions(beam_size=128, max_length=3, ensemble_mean=mean)
    results = decode(Ensemble(models, mean), pooled, [None, None], options)
    for i in range(2):
        image = [p[i : i + 1] for p in pooled]
        best = max(
            ((list(seq), combined_sequence_logprob(models, image, list(seq), mean))
             for n in range(4) for seq in itertools.product([4, 5, 6, 7], repeat=n)),
            key=lambda x: x[1],
        )  # fmt: skip
        assert results[i][0].tokens == best[0]
        assert results[i][0].score == pytest.approx(best[1], abs=1e-4)


def test_members_of_every_kind_and_attention_grids():
    show_tell, attention = tiny(3), tiny(4, "attention", feature_dim=6)
    transformer, other_grid = tiny(5, "transformer"), tiny(6, "attention")
    pooled = [torch.randn(2, 8), torch.randn(2, 6), torch.randn(2, 8), torch.randn(2, 8)]
    grid = [None, torch.randn(2, 5, 6), torch.randn(2, 3, 8), torch.randn(2, 4, 8)]
    options = DecodingOptions(max_length=5, attention=True)
    models = [show_tell, attention, transformer, other_grid]
    ensemble = Ensemble(models)
    assert ensemble.attends and ensemble.uses_grid
    results = decode(ensemble, pooled, grid, options)
    for hyps in results:  # grids of 5 and 4 positions: the first attending member's maps
        assert all(len(row) == 5 and sum(row) == pytest.approx(1) for row in hyps[0].attention)
    no_attention = Ensemble([show_tell, transformer])
    assert not no_attention.attends
    plain = decode(no_attention, [pooled[0], pooled[2]], [None, grid[2]], options)
    assert all(hyps[0].attention is None for hyps in plain)
    with pytest.raises(CaptionkitError, match="an ensemble of 2 models needs features for each"):
        decode(no_attention, [pooled[0]], [None], options)


# --- runs: Captioner, evaluate_run, the command line --------------------------------------------


def other_vocabulary_run(tmp_path_factory, lite0):
    from captionkit.models.run_folder import save_checkpoint

    vocab = Vocabulary([*SHAPE_WORDS, "hexagon"])
    model = create_model("show_tell", vocab_size=len(vocab), feature_dim=lite0.feature_dim,
                         hidden_dim=16, embed_dim=16)  # fmt: skip
    run = tmp_path_factory.mktemp("other-vocabulary")
    encoder = {"name": lite0.name, "weights": "default", "fingerprint": lite0.fingerprint()}
    extra = {"run": {"model": "show_tell", "data": {"max_length": 8}}}
    save_checkpoint(run, model.eval(), "show_tell", vocab, encoder, extra)
    return run


def test_captioner_ensembles_equal_the_run(tiny_attention_run, lite0, tmp_path):
    from captionkit.models.run_folder import load_checkpoint
    from captionkit.serving import Captioner

    write_images(tmp_path, ["a.png", "b.png"], size=64)
    images = [Image.open(tmp_path / n) for n in ("a.png", "b.png")]
    single = Captioner(load_checkpoint(tiny_attention_run), lite0)
    options = DecodingOptions(n_best=2)
    want = single.caption(images, options, attention=True)
    for runs in ([tiny_attention_run], [tiny_attention_run, tiny_attention_run]):
        ensemble = Captioner.load(runs)
        assert ensemble.ensemble and len(ensemble.encoders) == 1  # one encoder, run once
        got = ensemble.caption(images, options, attention=True)
        assert [[c.text for c in h] for h in got] == [[c.text for c in h] for h in want]
        assert [c.score for h in got for c in h] == pytest.approx(
            [c.score for h in want for c in h], abs=1e-4
        )
        assert all(abs(g[0].attention - w[0].attention).max() < 1e-4 for g, w in zip(got, want))


def test_runs_with_different_tokenizers_are_refused(tiny_attention_run, tmp_path_factory, lite0,
                                                    capsys):  # fmt: skip
    from captionkit.cli import main
    from captionkit.serving import Captioner

    other = other_vocabulary_run(tmp_path_factory, lite0)
    message = f"{tiny_attention_run} and {other} have different tokenizers"
    with pytest.raises(CaptionkitError, match=message):
        Captioner.load([tiny_attention_run, other])
    argv = ["caption", "--checkpoint", str(tiny_attention_run), "--checkpoint", str(other),
            "x.png"]  # fmt: skip
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1


def test_evaluate_an_ensemble_equals_the_run(tiny_attention_run, karpathy_dataset, tmp_path,
                                             monkeypatch):  # fmt: skip
    from captionkit.cli import main
    from captionkit.evaluation.evaluate import evaluate_run

    options = DecodingOptions(beam_size=2)
    alone = evaluate_run(tiny_attention_run, karpathy_dataset, split="test", meteor=False,
                         options=options)  # fmt: skip
    for runs in ([tiny_attention_run], [tiny_attention_run, tiny_attention_run]):
        together = evaluate_run(runs, karpathy_dataset, split="test", meteor=False,
                                options=options)  # fmt: skip
        assert together.predictions == alone.predictions
        assert together.metrics == pytest.approx(alone.metrics)
    # The report of an ensemble: its members, each one's training curves, its captions.
    report = tmp_path / "r.html"
    argv = ["evaluate", "--checkpoint", str(tiny_attention_run), "--checkpoint",
            str(tiny_attention_run), "--data", str(karpathy_dataset), "--split", "test",
            "--beam-size", "2", "--report", str(report)]  # fmt: skip

    def without_meteor(*args, **kwargs):  # METEOR's Java start-up alone takes ~20 s
        return evaluate_run(*args, **kwargs, meteor=False)

    monkeypatch.setattr("captionkit.evaluation.evaluate.evaluate_run", without_meteor)
    assert main(argv) == 0
    page = report.read_text()
    assert "<h1>ensemble of 2 runs</h1>" in page and f"runs: {tiny_attention_run}, " in page
    assert page.count("<h3>") == 2
    assert all(html.escape(c) in page for c in alone.predictions.values())
