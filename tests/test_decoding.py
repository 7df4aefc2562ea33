"""Decoding against references: brute-force enumeration, greedy, and finished-beam handling."""

import itertools
import math
import re
from dataclasses import replace

import pytest
import torch

from captionkit.data.vocab import Vocabulary
from captionkit.decoding import BeamSearch, DecodingOptions, decode
from captionkit.decoding.filters import logit_filters
from captionkit.decoding.search import run_search
from captionkit.errors import CaptionkitError
from captionkit.models import MODELS, create_model

WORDS = [4, 5, 6]  # ids after the four specials
EOS = Vocabulary.eos_id


def tiny_model(seed: int, vocab_size: int = 7, sharp: float = 3.0):
    torch.manual_seed(seed)
    model = create_model("show_tell", vocab_size=vocab_size, feature_dim=8, embed_dim=8,
                         hidden_dim=16, dropout=0.0)  # fmt: skip
    with torch.no_grad():  # sharper distributions make beams diverge from greedy
        model.head.weight.mul_(sharp)
    return model.eval()


SUPPRESSED = [Vocabulary.pad_id, Vocabulary.bos_id, Vocabulary.unk_id]  # by default


def sequence_logprob(model, pooled, seq: list[int], suppressed=SUPPRESSED) -> float:
    """log p(seq + <eos>) by stepping the model, with `suppressed` tokens at -inf as in decoding."""
    state = model.init_state(pooled, None)
    tokens, total = torch.tensor([Vocabulary.bos_id]), 0.0
    for tok in [*seq, EOS]:
        logits, state, _ = model.step(tokens, state)
        logits[:, suppressed] = -math.inf
        logp = torch.log_softmax(logits, -1)[0]
        total += float(logp[tok])
        tokens = torch.tensor([tok])
    return total


MAX_LEN = 3


def beam_search(model, pooled, grid, options):
    """The beam search strategy whatever the beam size (decode() picks greedy for 1)."""
    with torch.no_grad():
        return run_search(model, pooled, grid, options, logit_filters(options), BeamSearch(options))


def brute_force_best(model, pooled, allow_unk: bool):
    best = None
    words = [Vocabulary.unk_id, *WORDS] if allow_unk else WORDS  # <unk>: a legal word if allowed
    suppressed = [Vocabulary.pad_id, Vocabulary.bos_id] if allow_unk else SUPPRESSED
    for n in range(MAX_LEN + 1):
        for seq in itertools.product(words, repeat=n):
            score = sequence_logprob(model, pooled, list(seq), suppressed)
            if best is None or score > best[1]:
                best = (list(seq), score)
    return best


@pytest.mark.parametrize("allow_unk", [True, False])
@pytest.mark.parametrize("seed", range(4))
def test_beam_search_matches_brute_force(seed, allow_unk):
    model = tiny_model(seed)
    pooled = torch.randn(2, 8, generator=torch.Generator().manual_seed(seed))
    # 4 real words, length <= 3: no step has more than 4**2 + 4**3 = 80 candidates, so a beam of
    # 128 keeps every one of them and the search is exhaustive.
    options = DecodingOptions(beam_size=128, max_length=MAX_LEN, allow_unk=allow_unk)
    with torch.no_grad():
        results = decode(model, pooled, None, options)
        for i in range(2):
            seq, score = brute_force_best(model, pooled[i : i + 1], allow_unk)
            assert results[i][0].tokens == seq
            assert results[i][0].score == pytest.approx(score, abs=1e-4)


@pytest.mark.parametrize("seed", range(4))
def test_beam_size_one_equals_greedy(seed):
    model = tiny_model(seed, vocab_size=30)
    pooled = torch.randn(16, 8, generator=torch.Generator().manual_seed(seed))
    greedy = decode(model, pooled, None, DecodingOptions(beam_size=1, max_length=12))
    # decode() picks the greedy strategy for beam_size=1: run the beam search directly.
    beam1 = beam_search(model, pooled, None, DecodingOptions(beam_size=1, max_length=12))
    for g, b in zip(greedy, beam1):
        assert g[0].tokens == b[0].tokens
        assert g[0].score == pytest.approx(b[0].score, abs=1e-4)


def test_scores_are_the_model_log_probabilities():
    model = tiny_model(7, vocab_size=12)
    pooled = torch.randn(3, 8)
    for beam_size in (1, 3):
        results = decode(model, pooled, None, DecodingOptions(beam_size=beam_size, max_length=6))
        for i, hyps in enumerate(results):
            with torch.no_grad():
                expected = sequence_logprob(model, pooled[i : i + 1], hyps[0].tokens)
            if len(hyps[0].tokens) < 6:  # forced <eos> at the limit is scored the same way
                assert hyps[0].score == pytest.approx(expected, abs=1e-4)


def test_early_finish_and_no_eos():
    """In one batch, image 0 ends at once and image 1 never reaches <eos> before the limit."""
    model = tiny_model(1, vocab_size=7)
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.copy_(torch.tensor([0, 0, 0, 0, 5.0, 0, 0]))  # word 4 is always likely
    original_step, calls = model.step, []

    def step(tokens, state):
        out = original_step(tokens, state)
        logits, rows = out.logits.clone(), out.logits.shape[0]
        # Image 0's beams come first while it is in the batch; finished images leave it.
        image0 = rows // 2 if rows == 2 * beam_size else 0
        logits[:image0, EOS] = 20.0
        logits[image0:, EOS] = -30.0 if len(calls) < 5 else 0.0
        calls.append(rows)
        return out._replace(logits=logits)

    model.step = step
    for beam_size in (1, 4):
        calls.clear()
        options = DecodingOptions(beam_size=beam_size, max_length=5, n_best=min(2, beam_size))
        res = decode(model, torch.zeros(2, 8), None, options)
        assert res[0][0].tokens == [] and res[0][0].score > -1e-3
        assert res[1][0].tokens == [4] * 5  # closed at the length limit
        assert all(len(h) == min(2, beam_size) for h in res)
        assert all(h[0].score >= h[-1].score for h in res)
        if beam_size == 4:  # image 0 ended at the first step: then only image 1's rows ran
            assert calls == [8, 8, 4, 4, 4, 4]


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("beam_size", [1, 3])
def test_every_model_decodes(name, beam_size):
    model = create_model(name, vocab_size=20, feature_dim=8)
    pooled, grid = torch.randn(3, 8), torch.randn(3, 4, 8)
    options = DecodingOptions(beam_size=beam_size, max_length=7, n_best=min(2, beam_size))
    results = decode(model, pooled, grid, options)
    assert len(results) == 3
    for hyps in results:
        assert 1 <= len(hyps) <= 2
        assert all(len(h.tokens) <= 7 for h in hyps)
        assert all(t >= 3 for h in hyps for t in h.tokens)  # no pad/bos/eos inside a caption


@pytest.mark.parametrize("name", sorted(MODELS))
def test_state_kept_per_image_decodes_as_reordering_every_tensor(name, monkeypatch):
    """Beam search leaves a model's `image_state` (grid, its projection, a Transformer's memory)
    unreordered: the n-best lists and scores equal those of reordering the whole state."""
    from captionkit.decoding import search

    torch.manual_seed(1)
    model = create_model(name, vocab_size=20, feature_dim=8, dropout=0.0).eval()
    pooled, grid = torch.randn(4, 8), torch.randn(4, 5, 8)
    options = DecodingOptions(beam_size=3, max_length=8, n_best=3)
    kept = decode(model, pooled, grid, options)
    assert search.image_state_keys(model) == set(getattr(model, "image_state", ()))
    monkeypatch.setattr(search, "image_state_keys", lambda model: frozenset())
    reordered = decode(model, pooled, grid, options)
    assert [[h.tokens for h in r] for r in kept] == [[h.tokens for h in r] for r in reordered]
    for a, b in zip(kept, reordered):
        assert [h.score for h in a] == pytest.approx([h.score for h in b], abs=1e-6)


@pytest.mark.parametrize("name", ["attention", "updown"])
def test_attention_scored_in_blocks_decodes_as_in_one(name, monkeypatch):
    """Decoding scores the attention a block of rows at a time (`BLOCK_ELEMENTS`): with blocks
    of 1, 3 and 5 rows (of 5 images x 4 beams) the n-best lists and scores equal those of one
    block, and so do the scores of 12 rows in blocks of 5."""
    from captionkit.models import attention

    torch.manual_seed(2)
    model = create_model(name, vocab_size=20, feature_dim=8, dropout=0.0).eval()
    pooled, grid = torch.randn(5, 8), torch.randn(5, 6, 8)
    options = DecodingOptions(beam_size=4, max_length=8, n_best=4)
    monkeypatch.setattr(attention, "BLOCK_ELEMENTS", 10**9)
    whole = decode(model, pooled, grid, options)
    a = model.attention
    for images in (1, 2, 3):  # blocks of images x their 4 beams
        monkeypatch.setattr(attention, "BLOCK_ELEMENTS", images * 4 * 6 * a.grid_proj.out_features)
        blocked = decode(model, pooled, grid, options)
        assert [[x.tokens for x in r] for r in blocked] == [[x.tokens for x in r] for r in whole]
        for x, y in zip(blocked, whole):
            assert [s.score for s in x] == pytest.approx([s.score for s in y], abs=1e-6)
    with torch.no_grad():  # 5 images x 3 rows each, in blocks of 3 images and 2
        grid_att = torch.randn(5, 6, a.grid_proj.out_features)
        query = a.hidden_proj(torch.randn(5, 3, a.hidden_proj.in_features))
        one = torch.stack([torch.stack([a.score((g + q).tanh()).squeeze(-1) for q in qs])
                           for g, qs in zip(grid_att, query)])  # fmt: skip
        monkeypatch.setattr(attention, "BLOCK_ELEMENTS", 3 * 3 * 6 * a.grid_proj.out_features)
        assert torch.allclose(a._blocked_scores(grid_att, query), one, atol=1e-6)


# --- sampling, length penalty, n-gram blocking, attention --------------------------------------


def test_sampling_with_top_k_1_or_tiny_top_p_is_greedy():
    model = tiny_model(3, vocab_size=30)
    pooled = torch.randn(5, 8, generator=torch.Generator().manual_seed(3))
    greedy = decode(model, pooled, None, DecodingOptions(beam_size=1, max_length=10))
    for options in (DecodingOptions(sample=True, top_k=1, max_length=10, seed=0),
                    DecodingOptions(sample=True, top_p=1e-6, max_length=10, seed=0)):  # fmt: skip
        sampled = decode(model, pooled, None, options)
        for g, s in zip(greedy, sampled):
            assert s[0].tokens == g[0].tokens
            assert s[0].score == pytest.approx(g[0].score, abs=1e-5)


def test_sampling_is_seeded_and_draws_several_captions_per_image():
    model = tiny_model(4, vocab_size=30, sharp=0.5)  # flat distributions: samples differ
    pooled = torch.randn(3, 8, generator=torch.Generator().manual_seed(4))
    options = DecodingOptions(sample=True, num_samples=6, max_length=8, seed=11, temperature=1.5)
    first, again = decode(model, pooled, None, options), decode(model, pooled, None, options)
    assert [len(r) for r in first] == [6, 6, 6]
    assert [[h.tokens for h in r] for r in first] == [[h.tokens for h in r] for r in again]
    assert len({tuple(h.tokens) for h in first[0]}) > 1
    for i, hyps in enumerate(first):  # scores are the model's own log-probabilities
        for h in hyps:
            if len(h.tokens) < 8:
                with torch.no_grad():
                    expected = sequence_logprob(model, pooled[i : i + 1], h.tokens)
                assert h.score == pytest.approx(expected, abs=1e-4)


def test_average_length_penalty_matches_brute_force():
    model = tiny_model(5)
    pooled = torch.randn(1, 8, generator=torch.Generator().manual_seed(5))
    best = None
    for n in range(MAX_LEN + 1):
        for seq in itertools.product([3, *WORDS], repeat=n):
            with torch.no_grad():
                score = sequence_logprob(model, pooled, list(seq)) / (n + 1)
            if best is None or score > best[1]:
                best = (list(seq), score)
    options = DecodingOptions(beam_size=128, max_length=MAX_LEN, length_penalty="average")
    result = decode(model, pooled, None, options)[0][0]
    assert result.tokens == best[0]
    assert result.score / (len(result.tokens) + 1) == pytest.approx(best[1], abs=1e-5)


@pytest.mark.parametrize("beam_size", [1, 3])
def test_no_repeat_ngram_blocking(beam_size):
    model = tiny_model(1, vocab_size=7)
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.copy_(torch.tensor([0, 0, -9.0, 0, 5.0, 3.0, 0]))  # loves 4 4 4 ..., then 5
    pooled = torch.zeros(2, 8)
    plain = decode(model, pooled, None, DecodingOptions(beam_size=beam_size, max_length=6))
    assert plain[0][0].tokens == [4] * 6
    for n in (1, 2):
        options = DecodingOptions(beam_size=beam_size, max_length=6, no_repeat_ngram_size=n)
        tokens = decode(model, pooled, None, options)[0][0].tokens
        grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
        assert len(grams) == len(set(grams)) and len(tokens) >= 2


def test_attention_weights_come_with_every_token():
    torch.manual_seed(0)
    model = create_model("attention", vocab_size=20, feature_dim=8, embed_dim=8, hidden_dim=16,
                         attention_dim=8, dropout=0.0).eval()  # fmt: skip
    pooled, grid = torch.randn(2, 8), torch.randn(2, 5, 8)
    greedy = decode(model, pooled, grid, DecodingOptions(beam_size=1, max_length=6, attention=True))
    beam1 = beam_search(model, pooled, grid,
                        DecodingOptions(beam_size=1, max_length=6, attention=True))  # fmt: skip
    for g, b in zip(greedy, beam1):
        assert len(g[0].attention) == len(g[0].tokens) + 1
        assert all(len(row) == 5 and sum(row) == pytest.approx(1.0) for row in g[0].attention)
        assert b[0].tokens == g[0].tokens
        assert torch.allclose(torch.tensor(b[0].attention), torch.tensor(g[0].attention))
    beam3 = decode(model, pooled, grid, DecodingOptions(beam_size=3, max_length=6, attention=True))
    assert all(len(r[0].attention) == len(r[0].tokens) + 1 for r in beam3)
    plain = decode(model, pooled, grid, DecodingOptions(beam_size=3, max_length=6))
    assert [r[0].tokens for r in plain] == [r[0].tokens for r in beam3]
    assert all(r[0].attention is None for r in plain)  # not asked for: not collected
    with_attention = DecodingOptions(beam_size=1, max_length=6, attention=True)
    assert decode(tiny_model(0), torch.randn(1, 8), None, with_attention)[0][0].attention is None


# --- options ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("beam_size", 0, "beam_size must be at least 1, not 0"),
        ("max_length", 0, "max_length must be at least 1"),
        ("n_best", 0, "n_best must be at least 1"),
        ("num_samples", 0, "num_samples must be at least 1"),
        ("no_repeat_ngram_size", -2, "no_repeat_ngram_size must be 0 (off) or more"),
        ("temperature", 0.0, "temperature must be above 0"),
        ("top_k", -1, "top_k must be 0 (off) or more"),
        ("top_p", 1.01, "top_p must be in (0, 1], not 1.01"),
        ("top_p", 0.0, "top_p must be in (0, 1]"),
        ("length_penalty", "avg", "length_penalty must be None, 'average' or a number, not 'avg'"),
        ("length_penalty", float("nan"), "length_penalty must be"),
    ],
)
def test_options_refuse_values_no_strategy_can_use(field, value, message):
    from captionkit.errors import CaptionkitError

    with pytest.raises(CaptionkitError, match=re.escape(message)):
        DecodingOptions(**{field: value})
    DecodingOptions(length_penalty=0.6), DecodingOptions(length_penalty="average")  # accepted


def test_unset_max_length_decodes_up_to_20_tokens():
    model = tiny_model(1, vocab_size=7)
    with torch.no_grad():  # <eos> is never likely: captions stop at the limit
        model.head.weight.zero_()
        model.head.bias.copy_(torch.tensor([0, 0, -30.0, 0, 5.0, 0, 0]))
    for options in (DecodingOptions(), DecodingOptions(beam_size=2)):
        assert options.max_length is None
        assert len(decode(model, torch.zeros(1, 8), None, options)[0][0].tokens) == 20
    short = decode(model, torch.zeros(1, 8), None, DecodingOptions(max_length=4))
    assert short[0][0].tokens == [4] * 4


def test_describe_names_the_strategy():
    assert DecodingOptions().describe() == "beam 3"
    assert DecodingOptions(beam_size=1).describe() == "greedy"
    assert DecodingOptions(beam_size=5, length_penalty="average").describe() == (
        "beam 5 (length penalty average)"
    )
    sampling = DecodingOptions(sample=True, top_p=0.9, allow_unk=True, no_repeat_ngram_size=3)
    assert sampling.describe() == "sampling (top-p 0.9, no repeated 3-grams, <unk> allowed)"
    diverse = DecodingOptions(beam_size=6, beam_groups=3, bad_endings=True)
    assert diverse.describe() == "beam 6 (3 groups, diversity 0.5, no bad endings)"


def test_a_beam_keeping_more_finished_hypotheses_returns_them_after_its_own_best():
    # A beam of 2 that keeps 6 endings: its 2 best are the plain beam's (the plain search stops
    # only when no live beam could still enter them), then up to 4 more, distinct, each scored
    # with its true log-probability, ranked best first.
    extra = 0
    for seed in range(5):
        model, pooled = tiny_model(seed, vocab_size=12), torch.randn(2, 8)
        narrow = DecodingOptions(beam_size=2, n_best=2, max_length=6)
        plain = beam_search(model, pooled, None, narrow)
        more = beam_search(model, pooled, None, replace(narrow, n_best=6, finished=6))
        for i, (ours, wide) in enumerate(zip(plain, more)):
            assert [h.tokens for h in wide[:2]] == [h.tokens for h in ours]
            assert len({tuple(h.tokens) for h in wide}) == len(wide) <= 6
            extra += len(wide) - len(ours)
            assert [h.score for h in wide] == sorted((h.score for h in wide), reverse=True)
            for h in wide:
                truth = sequence_logprob(model, pooled[i : i + 1], h.tokens)
                assert h.score == pytest.approx(truth, abs=1e-4)
    assert extra >= 8  # of 40 possible: random models end captions rarely
    with pytest.raises(CaptionkitError, match="n_best 4 is more than beam_size 2 and finished 3"):
        DecodingOptions(beam_size=2, n_best=4, finished=3)
    assert DecodingOptions(finished=8, n_best=8).describe() == "beam 3 (8 finished kept)"
