"""The peers' decoding rules (#16): no <unk> unless allowed, no bad endings, diverse beam search
against a reference implementation; DecodingOptions' checks of conflicting options."""

import math
import re
from collections import Counter

import pytest
import torch

from captionkit.data.tokenizers import BpeTokenizer
from captionkit.data.vocab import Vocabulary
from captionkit.decoding import BAD_ENDINGS, DecodingOptions, decode
from captionkit.decoding.filters import bad_ending_ids
from captionkit.errors import CaptionkitError
from captionkit.models import create_model

EOS, UNK = Vocabulary.eos_id, Vocabulary.unk_id
# Whole n-best lists: the best beam of a model whose next-token distribution never changes is
# the empty caption (every word lowers the total), the other hypotheses hold words.
EVERY_STRATEGY = [
    {"beam_size": 1},
    {"beam_size": 3, "n_best": 3},
    {"beam_size": 4, "beam_groups": 2, "n_best": 4},
    {"sample": True, "num_samples": 5, "seed": 0},
]


def biased_model(vocab_size: int, bias: dict[int, float], seed: int = 0):
    """A Show-and-Tell model whose next-token distribution is fixed by `bias` (zero weights)."""
    torch.manual_seed(seed)
    model = create_model("show_tell", vocab_size=vocab_size, feature_dim=8, embed_dim=8,
                         hidden_dim=16, dropout=0.0)  # fmt: skip
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.fill_(-5.0)
        for token, value in bias.items():
            model.head.bias[token] = value
    return model.eval()


# --- <unk> --------------------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", EVERY_STRATEGY)
def test_unk_is_never_generated_unless_allowed(strategy):
    model = biased_model(8, {UNK: 3.0, 4: 1.0, 5: 0.5, EOS: 0.0})  # <unk> is the likeliest
    pooled = torch.randn(3, 8)
    results = decode(model, pooled, None, DecodingOptions(max_length=5, **strategy))
    assert all(UNK not in h.tokens for hyps in results for h in hyps)
    assert any(h.tokens for hyps in results for h in hyps)
    allowed = decode(model, pooled, None, DecodingOptions(max_length=5, allow_unk=True, **strategy))
    assert any(UNK in h.tokens for hyps in allowed for h in hyps)


# --- bad endings --------------------------------------------------------------------------------


def test_bad_endings_never_end_a_caption():
    vocab = Vocabulary(["a", "dog", "runs", "on"])
    a, dog, runs, on = (vocab.stoi[w] for w in ["a", "dog", "runs", "on"])
    # "a" is always likeliest: the plain search ends "... a" at the length limit or earlier.
    model = biased_model(len(vocab), {a: 3.0, EOS: 2.0, on: 1.5, dog: 1.0, runs: 0.5})
    pooled = torch.randn(4, 8)
    for strategy in EVERY_STRATEGY:
        plain = decode(model, pooled, None, DecodingOptions(max_length=6, **strategy), vocab)
        assert any(h.tokens and h.tokens[-1] in (a, on) for hyps in plain for h in hyps)
        options = DecodingOptions(max_length=6, bad_endings=True, **strategy)
        for hyps in decode(model, pooled, None, options, vocab):
            for h in hyps:
                assert h.tokens == [] or vocab.decode(h.tokens).split()[-1] not in BAD_ENDINGS
                assert len(h.tokens) <= 6 and math.isfinite(h.score)
    greedy = decode(model, pooled, None, DecodingOptions(beam_size=1, max_length=6,
                                                         bad_endings=True), vocab)  # fmt: skip
    assert greedy[0][0].tokens == [a] * 5 + [dog]  # the best word that may end it, at the limit


def test_bad_endings_need_the_tokenizer():
    model = biased_model(8, {4: 1.0})
    with pytest.raises(CaptionkitError, match="bad_endings needs the tokenizer"):
        decode(model, torch.randn(1, 8), None, DecodingOptions(bad_endings=True))


def test_bad_endings_apply_to_whole_word_tokens_only():
    words = Vocabulary(["a", "the", "dog", "banana", "with"])
    assert sorted(words.itos[i] for i in bad_ending_ids(words)) == ["a", "the", "with"]
    captions = ["a dog with a banana", "the banana on the table", "a cat and a dog"] * 20
    bpe = BpeTokenizer.train(captions, vocab_size=60)
    ids = bad_ending_ids(bpe)
    pieces = [bpe.hf.id_to_token(i) for i in ids]
    assert "\u2581a" in pieces
    assert all(p.startswith("\u2581") and p[1:] in BAD_ENDINGS for p in pieces)
    assert bpe.hf.token_to_id("a") not in ids  # the piece "a" (as in "banana") ends no word


# --- diverse beam search ------------------------------------------------------------------------


def step_logprobs(model, pooled, seq: list[int], last: bool) -> torch.Tensor:
    """log p(. | seq) [V] from scratch, filtered as decoding filters by default."""
    state = model.init_state(pooled, None)
    for tok in [Vocabulary.bos_id, *seq]:
        logits, state, _ = model.step(torch.tensor([tok]), state)
    logits[:, [Vocabulary.pad_id, Vocabulary.bos_id, UNK]] = -math.inf
    logp = torch.log_softmax(logits[0], -1)
    if last:
        logp = torch.where(torch.arange(len(logp)) == EOS, logp, -math.inf)
    return logp


def reference_diverse_beam(model, pooled, k: int, groups: int, lam: float, max_len: int):
    """Diverse beam search for one image, one hypothesis at a time (Hugging Face's group beam
    search): returns every group's finished (tokens, log-probability), best first."""
    size = k // groups
    beams = [[([], 0.0, 0.0)] for _ in range(groups)]  # (tokens, penalised, log-probability)
    finished = [[] for _ in range(groups)]
    for t in range(max_len + 1):
        chosen = Counter()
        for g in range(groups):
            cands = []
            for seq, pen, true in beams[g]:
                logp = step_logprobs(model, pooled, seq, t == max_len).tolist()
                cands += [(pen + lp - lam * chosen[tok], true + lp, seq, tok)
                          for tok, lp in enumerate(logp) if lp > -math.inf]  # fmt: skip
            cands = sorted(cands, key=lambda c: -c[0])[: 2 * size]
            beams[g] = []
            for rank, (pen, true, seq, tok) in enumerate(cands):
                if tok == EOS:
                    if rank < size:
                        finished[g].append((pen, seq, true))
                elif len(beams[g]) < size:
                    beams[g].append(([*seq, tok], pen, true))
            finished[g] = sorted(finished[g], key=lambda f: -f[0])[:size]
            chosen.update(seq[-1] for seq, _, _ in beams[g])
    hyps = [(seq, true) for group in finished for _, seq, true in group]
    return sorted(hyps, key=lambda h: -h[1])


@pytest.mark.parametrize(("k", "groups", "lam"), [(3, 1, 0.0), (4, 2, 0.5), (6, 3, 2.0)])
def test_diverse_beam_search_matches_a_reference(k, groups, lam):
    torch.manual_seed(k)
    model = create_model("show_tell", vocab_size=9, feature_dim=8, embed_dim=8, hidden_dim=16,
                         dropout=0.0).eval()  # fmt: skip
    with torch.no_grad():
        model.head.weight.mul_(3.0)
    pooled = torch.randn(3, 8)
    extra = {"diversity": lam} if groups > 1 else {}
    options = DecodingOptions(beam_size=k, beam_groups=groups, n_best=k, max_length=4, **extra)
    results = decode(model, pooled, None, options)
    with torch.no_grad():
        for i, hyps in enumerate(results):
            want = reference_diverse_beam(model, pooled[i : i + 1], k, groups, lam, 4)
            assert [h.tokens for h in hyps] == [seq for seq, _ in want]
            assert [h.score for h in hyps] == pytest.approx([s for _, s in want], abs=1e-4)


def test_diverse_beam_search_with_one_group_is_beam_search():
    torch.manual_seed(1)
    model = create_model("attention", vocab_size=20, feature_dim=8, embed_dim=8, hidden_dim=16,
                         attention_dim=8, dropout=0.0).eval()  # fmt: skip
    pooled, grid = torch.randn(4, 8), torch.randn(4, 5, 8)
    beam = decode(model, pooled, grid, DecodingOptions(beam_size=4, n_best=4, max_length=7))
    one = decode(model, pooled, grid, DecodingOptions(beam_size=4, beam_groups=1, n_best=4,
                                                      max_length=7))  # fmt: skip
    assert beam == one


def test_strong_diversity_sends_each_group_to_other_first_words():
    torch.manual_seed(2)
    model = create_model("show_tell", vocab_size=20, feature_dim=8, embed_dim=8, hidden_dim=16,
                         dropout=0.0).eval()  # fmt: skip
    with torch.no_grad():
        model.head.bias[EOS] = -20.0  # no empty captions: every hypothesis has a first word
    pooled = torch.randn(3, 8)
    options = DecodingOptions(beam_size=4, beam_groups=4, diversity=100.0, n_best=4, max_length=3)
    for hyps in decode(model, pooled, None, options):
        assert len({h.tokens[0] for h in hyps}) == 4  # one beam per group, each its own word
    plain = decode(model, pooled, None, DecodingOptions(beam_size=4, n_best=4, max_length=3))
    assert any(len({h.tokens[0] for h in hyps}) < 4 for hyps in plain)


# --- options ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"sample": True, "beam_size": 3}, "beam_size: beam search options, not used with sample"),
        (
            {"sample": True, "n_best": 2, "length_penalty": 0.5},
            "n_best, length_penalty: beam search options, not used with sample",
        ),
        ({"sample": True, "beam_groups": 1, "diversity": 0.3}, "diversity: beam search options"),
        ({"top_k": 5}, "top_k: sampling options, used only with sample"),
        ({"temperature": 2.0, "seed": 1}, "temperature, seed: sampling options"),
        ({"beam_size": 2, "n_best": 3}, "n_best 3 is more than beam_size 2"),
        ({"n_best": 4}, "n_best 4 is more than beam_size 3"),
        ({"beam_size": 1, "length_penalty": "average"}, "length_penalty ranks beams: it needs"),
        ({"beam_size": 4, "beam_groups": 3}, "beam_groups 3 must divide beam_size 4"),
        ({"beam_groups": 0}, "beam_groups must be at least 1, not 0"),
        ({"beam_size": 4, "beam_groups": 2, "diversity": -1.0}, "diversity must be 0 or more"),
        ({"diversity": 0.5}, "diversity penalises beam groups: it needs beam_groups 2 or more"),
        ({"ensemble_mean": "median"}, "ensemble_mean must be 'probability' or 'log_probability'"),
    ],
)
def test_options_refuse_conflicts(kwargs, message):
    with pytest.raises(CaptionkitError, match=re.escape(message)):
        DecodingOptions(**kwargs)


def test_options_defaults_are_the_one_default():
    options = DecodingOptions()
    assert (options.beam_size, options.n_best, options.allow_unk) == (3, 1, False)
    assert not options.bad_endings and not options.sample
    assert DecodingOptions(sample=True).beam_size == 1
    assert DecodingOptions(beam_size=4, beam_groups=2).diversity == 0.5
    assert DecodingOptions(beam_size=1) == DecodingOptions(beam_size=1)  # hashable, comparable
    assert len({DecodingOptions(), DecodingOptions(beam_size=3)}) == 1
