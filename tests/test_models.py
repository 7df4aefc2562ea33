"""The caption models: shapes, cached decoding, attention and its regulariser, and overfitting."""

import ast
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import captionkit
from captionkit.data.vocab import Vocabulary
from captionkit.decoding import DecodingOptions, decode
from captionkit.errors import CaptionkitError
from captionkit.models import MODELS, StepModel, create_model, model_entry
from captionkit.models.attention import attention_regularizer
from captionkit.models.dropout import Dropout, dropout
from captionkit.models.run_folder import load_checkpoint, save_checkpoint

TINY = {
    "show_tell": {"embed_dim": 16, "hidden_dim": 16},
    "attention": {"embed_dim": 16, "hidden_dim": 32, "attention_dim": 16},
    "transformer": {"d_model": 32, "n_heads": 4, "n_layers": 2, "d_ff": 64},
    "updown": {"embed_dim": 16, "hidden_dim": 32, "attention_dim": 16},
}
V, D, L = 20, 8, 6


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors gain nothing from intra-op threads, and on a busy machine the threads'
    spinning makes these tests many times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny(name: str, **overrides):
    torch.manual_seed(0)
    return create_model(name, vocab_size=V, feature_dim=D, **{**TINY[name], **overrides})


def inputs(batch: int = 3, length: int = 5, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    pooled, grid = torch.randn(batch, D, generator=g), torch.randn(batch, L, D, generator=g)
    tokens = torch.randint(3, V, (batch, length), generator=g)
    tokens[:, 0] = Vocabulary.bos_id
    return pooled, grid, tokens


def test_an_unknown_model_name_is_one_error_listing_the_models():
    listed = "must be one of show_tell, attention, transformer, updown, not 'lstm'"
    with pytest.raises(CaptionkitError, match=f"^--model {listed}$"):
        model_entry("lstm", "--model")
    with pytest.raises(CaptionkitError, match=f"^model {listed}$"):
        create_model("lstm", vocab_size=V, feature_dim=D)
    assert model_entry("updown").config_class(vocab_size=V, feature_dim=D).hidden_dim == 512


def test_only_the_registry_reads_the_model_names():
    """`MODELS` is read in `captionkit.models` alone: every other module goes through
    `model_entry`, the one check of a name."""
    package = Path(captionkit.__file__).parent
    readers = []
    for path in sorted(package.rglob("*.py")):
        nodes = list(ast.walk(ast.parse(path.read_text(encoding="utf-8"))))
        names = {n.id for n in nodes if isinstance(n, ast.Name)}
        names |= {a.name for n in nodes if isinstance(n, ast.ImportFrom) for a in n.names}
        if "MODELS" in names:
            readers.append(path.relative_to(package).as_posix())
    assert readers == ["models/__init__.py"]


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_model_declares_what_decoding_reads_through_step_model(name):
    model = tiny(name)
    assert isinstance(model, StepModel)
    state = model.init_state(torch.randn(2, D), torch.randn(2, L, D))
    assert set(model.image_state) <= set(state)  # names of its own state


@pytest.mark.parametrize("name", sorted(MODELS))
def test_forward_and_step_shapes(name):
    model = tiny(name).eval()
    pooled, grid, tokens = inputs()
    assert model(pooled, grid, tokens).shape == (3, 5, V)
    state = model.init_state(pooled, grid)
    assert all(v.shape[0] == 3 for v in state.values())  # batch-first, for beam reordering
    for t in range(2):
        logits, state, attention = model.step(tokens[:, t], state)
        assert logits.shape == (3, V)
        assert all(v.shape[0] == 3 for v in state.values())
        # The declared capability: attention [B, L] from the step exactly when the model attends.
        assert model.attends == (name in ("attention", "updown"))
        assert (attention is not None) == model.attends
        assert attention is None or attention.shape == (3, L)


@pytest.mark.parametrize("name", ["attention", "transformer", "updown"])
def test_no_grid_falls_back_to_pooled(name):
    model = tiny(name).eval()
    pooled, _, tokens = inputs()
    assert model(pooled, None, tokens).shape == (3, 5, V)
    logits = model.step(tokens[:, 0], model.init_state(pooled, None)).logits
    assert logits.shape == (3, V)


SHOW_TELL_VARIANTS = [
    {"rnn": rnn, "image_input": image_input}
    for rnn in ("lstm", "gru")
    for image_input in ("first_word", "init_state")
]
# (model, config overrides): every model, and Show-and-Tell in each of its variants.
NO_INPUT_DROPOUT = {"feature_dropout": 0.0, "word_dropout": 0.0}
VARIANTS = [("show_tell", v) for v in SHOW_TELL_VARIANTS] + [
    ("attention", NO_INPUT_DROPOUT),
    ("attention", {**NO_INPUT_DROPOUT, "embed_features": False}),
    ("transformer", {}),
    ("updown", NO_INPUT_DROPOUT),
]
VARIANT_IDS = [
    "-".join([name, *(v for v in o.values() if isinstance(v, str))])
    + ("-raw_features" if o.get("embed_features") is False else "")
    for name, o in VARIANTS
]


@pytest.mark.parametrize(("name", "overrides"), VARIANTS, ids=VARIANT_IDS)
def test_every_parameter_gets_a_gradient(name, overrides):
    """DDP (`--strategy ddp`, no unused-parameter search) fails on a parameter that a training
    step leaves without a gradient: every model and variant must use all of its weights."""
    model = tiny(name, **overrides).train()
    pooled, grid, tokens = inputs()
    model(pooled, grid, tokens).logsumexp(-1).mean().backward()
    assert [n for n, p in model.named_parameters() if p.grad is None] == []


@pytest.mark.parametrize(("name", "overrides"), VARIANTS, ids=VARIANT_IDS)
def test_step_by_step_equals_teacher_forcing(name, overrides):
    if name == "show_tell":  # two layers: the image must reach the state of every layer
        overrides = {**overrides, "num_layers": 2}
    model = tiny(name, dropout=0.0, **overrides).eval()
    pooled, grid, tokens = inputs(length=9)
    with torch.no_grad():
        full = model(pooled, grid, tokens)  # [B, T, V]
        state, steps = model.init_state(pooled, grid), []
        for t in range(tokens.shape[1]):
            logits, state, _ = model.step(tokens[:, t], state)
            steps.append(logits)
    torch.testing.assert_close(torch.stack(steps, dim=1), full, atol=1e-5, rtol=0)


@pytest.mark.parametrize("positions", ["learned", "sinusoidal"])
@pytest.mark.parametrize("tie_weights", [True, False])
def test_transformer_cache_matches_full_forward(positions, tie_weights):
    model = tiny("transformer", positions=positions, tie_weights=tie_weights).eval()
    pooled, grid, tokens = inputs(batch=4, length=12, seed=1)
    with torch.no_grad():
        full = model(pooled, grid, tokens)
        state, steps = model.init_state(pooled, grid), []
        for t in range(tokens.shape[1]):
            logits, state, _ = model.step(tokens[:, t], state)
            steps.append(logits)
            assert state["self_k.0"].shape == (4, 4, t + 1, 8)  # [B, heads, t, head_dim]
            assert state["position"].tolist() == [t + 1] * 4
    torch.testing.assert_close(torch.stack(steps, dim=1), full, atol=1e-5, rtol=0)


def test_transformer_tied_weights_share_the_embedding():
    tied, untied = tiny("transformer"), tiny("transformer", tie_weights=False)
    assert "head.weight" not in tied.state_dict()
    assert sum(p.numel() for p in tied.parameters()) < sum(p.numel() for p in untied.parameters())


def test_transformer_rejects_captions_past_max_length():
    model = tiny("transformer", max_length=4)
    pooled, grid, tokens = inputs(length=5)
    with pytest.raises(ValueError, match="max_length"):
        model(pooled, grid, tokens)


@pytest.mark.parametrize("name", ["attention", "updown"])
def test_attention_weights_are_distributions(name):
    model = tiny(name).eval()
    assert model.attends
    pooled, grid, tokens = inputs()
    logits, alpha = model(pooled, grid, tokens, return_attention=True)
    torch.testing.assert_close(logits, model(pooled, grid, tokens))
    assert alpha.shape == (3, 5, L)
    torch.testing.assert_close(alpha.sum(-1), torch.ones(3, 5))
    state = model.init_state(pooled, grid)
    attention = model.step(tokens[:, 0], state).attention
    assert attention.shape == (3, L)
    torch.testing.assert_close(attention.sum(-1), torch.ones(3))
    torch.testing.assert_close(attention, alpha[:, 0])


def test_doubly_stochastic_regularizer_by_hand():
    # Two images, three input tokens, two positions; image 1's last input is <pad>, which
    # predicts nothing and so does not count.
    tokens = torch.tensor([[1, 4, 5], [1, 4, 0]])
    alpha = torch.tensor(
        [[[0.5, 0.5], [0.2, 0.8], [1.0, 0.0]], [[0.3, 0.7], [0.6, 0.4], [0.9, 0.1]]]
    )
    # Image 0: sums over t are (1.7, 1.3): (1-1.7)^2 + (1-1.3)^2 = 0.49 + 0.09 = 0.58.
    # Image 1 (two steps): (0.9, 1.1): 0.01 + 0.01 = 0.02.  0.5 * mean(0.58, 0.02) = 0.15.
    assert float(attention_regularizer(alpha, tokens, 0.5)) == pytest.approx(0.15)
    assert float(attention_regularizer(alpha, tokens, 0.0)) == 0.0


def test_regularizer_has_gradients_for_the_attention():
    model = tiny("attention")
    pooled, grid, tokens = inputs()
    _, alpha = model(pooled, grid, tokens, return_attention=True)
    attention_regularizer(alpha, tokens, 1.0).backward()
    assert model.attention.hidden_proj.weight.grad.abs().sum() > 0


def test_grid_is_projected_once_per_image_batch():
    model = tiny("attention")
    calls = []
    model.attention.grid_proj.register_forward_hook(lambda *_: calls.append(1))
    pooled, grid, _ = inputs(batch=2)
    results = decode(model, pooled, grid, DecodingOptions(beam_size=3, max_length=5))
    assert len(results) == 2
    assert len(calls) == 1


def test_transformer_memory_is_projected_once_per_image_batch():
    model = tiny("transformer")
    calls = []
    model.memory_proj.register_forward_hook(lambda *_: calls.append(1))
    pooled, grid, _ = inputs(batch=2)
    decode(model, pooled, grid, DecodingOptions(beam_size=3, max_length=5))
    assert len(calls) == 1


CAPTIONS = [[4, 5, 6], [7, 8, 9, 10], [11, 12], [13, 5, 14, 15, 16]]


@pytest.mark.parametrize(("name", "overrides"), VARIANTS, ids=VARIANT_IDS)
def test_overfits_four_examples(name, overrides):
    model = tiny(name, dropout=0.0, **overrides)
    g = torch.Generator().manual_seed(3)
    pooled, grid = torch.randn(4, D, generator=g), torch.randn(4, L, D, generator=g)
    tokens = torch.zeros(4, 7, dtype=torch.long)  # <bos> words <eos> <pad>..
    for i, words in enumerate(CAPTIONS):
        tokens[i, : len(words) + 2] = torch.tensor([Vocabulary.bos_id, *words, Vocabulary.eos_id])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(100):
        logits = model(pooled, grid, tokens[:, :-1])
        ce = F.cross_entropy(
            logits.reshape(-1, V), tokens[:, 1:].reshape(-1), ignore_index=Vocabulary.pad_id
        )
        loss = ce
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert float(ce.detach()) < 0.5
    results = decode(model, pooled, grid, DecodingOptions(beam_size=1, max_length=8))
    assert [r[0].tokens for r in results] == CAPTIONS


@pytest.mark.parametrize(("name", "overrides"), VARIANTS, ids=VARIANT_IDS)
def test_checkpoint_round_trip(name, overrides, tmp_path):
    """Tied weights must not share tensors: safetensors refuses to save those."""
    model = tiny(name, **overrides).eval()
    vocab = Vocabulary.build(["a dog runs", "a cat sits"])
    save_checkpoint(tmp_path, model, name, vocab, {"name": "x", "weights": "y", "fingerprint": "z"})
    loaded = load_checkpoint(tmp_path).model
    assert loaded.config == model.config
    pooled, grid, tokens = inputs()
    torch.testing.assert_close(loaded(pooled, grid, tokens), model(pooled, grid, tokens))


def test_show_tell_default_keeps_its_parameters_and_init_state_adds_its_own():
    """Checkpoints saved before `image_input` existed load unchanged: same keys, same default."""
    default = set(tiny("show_tell").state_dict())
    assert not any(k.startswith("init_") for k in default)
    lstm = set(tiny("show_tell", image_input="init_state").state_dict())
    gru = set(tiny("show_tell", image_input="init_state", rnn="gru").state_dict())
    assert lstm - default == {"init_h.weight", "init_h.bias", "init_c.weight", "init_c.bias"}
    assert gru - set(tiny("show_tell", rnn="gru").state_dict()) == {"init_h.weight", "init_h.bias"}


@pytest.mark.parametrize("rnn", ["lstm", "gru"])
def test_show_tell_init_state_sets_every_layer_from_the_image(rnn):
    model = tiny("show_tell", rnn=rnn, image_input="init_state", num_layers=3).eval()
    pooled = inputs()[0]
    state = model.init_state(pooled, None)
    image = model.image_proj(pooled)
    expected_h = torch.tanh(model.init_h(image)).view(3, 3, 16)  # [B, N, H]
    torch.testing.assert_close(state["h"], expected_h)
    assert set(state) == ({"h", "c"} if rnn == "lstm" else {"h"})
    assert not torch.allclose(state["h"][0], state["h"][1])  # each image its own state


@pytest.mark.parametrize(
    ("overrides", "message"),
    [({"rnn": "rnn"}, "rnn must be 'lstm' or 'gru'"), ({"image_input": "x"}, "image_input must")],
)
def test_show_tell_config_rejects_unknown_choices(overrides, message):
    with pytest.raises(ValueError, match=message):
        tiny("show_tell", **overrides)


def attention_stepped(model, pooled, grid, tokens):
    """The attention model's teacher forcing as it was first written: `_cell` at every position
    of the padded batch -> logits [B, T, V], α [B, T, L]."""
    grid, grid_att, h, c = model._encode(pooled, grid)
    hs, alphas = [], []
    for t in range(tokens.shape[1]):
        h, c, alpha = model._cell(model.embed(tokens[:, t]), grid, grid_att, h, c)
        hs.append(h)
        alphas.append(alpha)
    return model.head(torch.stack(hs, dim=1)), torch.stack(alphas, dim=1)


@pytest.mark.parametrize("gate", [True, False])
def test_attention_forward_equals_stepping_the_cell_with_gradients(gate):
    """The sorted, shrinking-batch forward against `_cell` stepped over the whole padded batch:
    same logits and attention wherever a caption still runs, same loss, same gradients."""
    model = tiny("attention", dropout=0.0, gate=gate, **NO_INPUT_DROPOUT)
    pooled, grid, tokens = inputs(batch=5, length=8, seed=2)
    for row, length in enumerate([8, 3, 6, 1, 5]):  # <eos> then padding; unsorted lengths
        tokens[row, length:] = Vocabulary.pad_id
        if length < 8:
            tokens[row, length] = Vocabulary.eos_id
    targets = torch.cat([tokens[:, 1:], torch.zeros_like(tokens[:, :1])], dim=1)
    fast, fast_alpha = model(pooled, grid, tokens, return_attention=True)
    fast_reg = attention_regularizer(fast_alpha, tokens, model.config.alpha_c)
    fast_loss = F.cross_entropy(fast.flatten(0, 1), targets.flatten(), ignore_index=0) + fast_reg
    fast_grads = torch.autograd.grad(fast_loss, list(model.parameters()), allow_unused=True)
    slow, slow_alpha = attention_stepped(model, pooled, grid, tokens)
    slow_loss = F.cross_entropy(slow.flatten(0, 1), targets.flatten(), ignore_index=0)
    slow_loss = slow_loss + attention_regularizer(slow_alpha, tokens, model.config.alpha_c)
    slow_grads = torch.autograd.grad(slow_loss, list(model.parameters()), allow_unused=True)
    running = (tokens != Vocabulary.pad_id) & (tokens != Vocabulary.eos_id)  # [B, T]
    assert running.sum(1).tolist() == [8, 3, 6, 1, 5]
    torch.testing.assert_close(fast[running], slow[running], atol=1e-5, rtol=0)
    torch.testing.assert_close(fast_alpha[running], slow_alpha[running], atol=1e-5, rtol=0)
    assert float(fast_alpha[~running].detach().abs().sum()) == 0.0  # none after the caption
    torch.testing.assert_close(fast_loss, slow_loss, atol=1e-5, rtol=0)
    for (name, _), a, b in zip(model.named_parameters(), fast_grads, slow_grads):
        if b is None or a is None:  # f_beta without the gate; the score bias (softmax-invariant)
            assert a is None or float(a.abs().sum()) == 0.0, name
            continue
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4, msg=name)


SHARING = sorted(n for n, entry in MODELS.items() if entry.model_class.shares_images)


@pytest.mark.parametrize("name", SHARING)
def test_features_per_image_with_image_index_equal_features_per_caption(name):
    """Grouped batches (`train.group_images`): each image's features once and `image_index`
    give the logits, attention and gradients of the same features repeated for every caption."""
    assert SHARING == ["attention", "updown"]
    model = tiny(name, dropout=0.0, **NO_INPUT_DROPOUT)
    pooled, grid, tokens = inputs(batch=7, length=6, seed=3)
    tokens[2, 4:] = Vocabulary.pad_id  # captions of different lengths
    index = torch.tensor([2, 0, 0, 1, 2, 2, 1])  # caption -> image, unsorted
    images = slice(0, 3)
    grouped = model(pooled[images], grid[images], tokens, return_attention=True,
                    image_index=index)  # fmt: skip
    repeated = model(pooled[index], grid[index], tokens, return_attention=True)
    for a, b in zip(grouped, repeated):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    params = list(model.parameters())
    ga = torch.autograd.grad(grouped[0].logsumexp(-1).sum(), params, allow_unused=True)
    gb = torch.autograd.grad(repeated[0].logsumexp(-1).sum(), params, allow_unused=True)
    for (n, _), a, b in zip(model.named_parameters(), ga, gb):
        if a is not None or b is not None:
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4, msg=n)


def test_weight_drop_masks_the_recurrent_weights_in_training_only():
    """DropConnect on W_hh: at p = 1 the training forward is that of a model without recurrent
    weights; in eval mode it is the model as it is."""
    quiet = {**NO_INPUT_DROPOUT, "dropout": 0.0}
    dropped, plain = tiny("attention", weight_drop=1.0, **quiet), tiny("attention", **quiet)
    pooled, grid, tokens = inputs()
    torch.testing.assert_close(dropped.eval()(pooled, grid, tokens),
                               plain.eval()(pooled, grid, tokens))  # fmt: skip
    with torch.no_grad():
        plain.lstm.weight_hh.zero_()
    torch.testing.assert_close(dropped.train()(pooled, grid, tokens),
                               plain.train()(pooled, grid, tokens))  # fmt: skip
    assert not torch.allclose(dropped.train()(pooled, grid, tokens),
                              dropped.eval()(pooled, grid, tokens))  # fmt: skip


# --- dropout and autocast in training --------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dropout_zeroes_with_probability_p_and_scales_the_rest(dtype):
    """`models.dropout` draws nn.Dropout's distribution: each element zeroed with probability p
    (to within 5 standard deviations over 200,000 draws, in bf16 too: the draws are float32),
    the others x / (1 - p), and the gradient is the same mask; the same seed draws the same."""
    p, n = 0.1, 200_000
    x = torch.full((n,), 2.0, dtype=dtype, requires_grad=True)
    torch.manual_seed(1)
    out = dropout(x, p)
    zeroed = (out == 0).float().mean().item()
    assert abs(zeroed - p) < 5 * (p * (1 - p) / n) ** 0.5
    assert torch.all((out == 0) | (out == torch.tensor(2.0 / (1 - p), dtype=dtype)))
    out.sum().backward()
    torch.testing.assert_close(x.grad, out.detach() / 2)
    torch.manual_seed(1)
    assert torch.equal(dropout(x, p), out)
    assert not torch.equal(dropout(x, p), out)  # the next draw differs


def test_dropout_module_is_nn_dropout_in_eval_and_at_the_ends():
    x = torch.randn(4, 5)
    assert torch.equal(Dropout(0.5).eval()(x), x)
    assert torch.equal(Dropout(0.0)(x), x)
    assert torch.equal(Dropout(1.0)(x), torch.zeros_like(x))
    assert isinstance(Dropout(0.5), torch.nn.Dropout)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_model_draws_dropout_masks_with_torch_rand(name):
    """No model keeps torch's own nn.Dropout, whose bernoulli_ mask is the slow one on a CPU."""
    plain = [n for n, m in tiny(name).named_modules() if type(m) is torch.nn.Dropout]
    assert plain == []


@pytest.mark.parametrize("name", ["attention", "updown"])
def test_recurrent_weights_cast_once_under_autocast_give_the_same_forward(name, monkeypatch):
    """Under bf16 autocast the recurrence reads its weights cast once (`cast_once`) instead of
    autocast casting them again at every step: the same logits bit for bit, and gradients
    within bf16's rounding of the per-step casts' (whose sums run in float32)."""
    model = tiny(name, **NO_INPUT_DROPOUT, dropout=0.0).train()
    pooled, grid, tokens = inputs(batch=4, length=7)

    def run():
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = model(pooled, grid, tokens)
        logits.float().logsumexp(-1).sum().backward()
        return logits, [p.grad.clone() for p in model.parameters()]

    once, once_grads = run()
    monkeypatch.setattr(f"captionkit.models.{name}.cast_once", lambda *w: w)
    every_step, step_grads = run()
    assert torch.equal(once, every_step)
    for a, b in zip(once_grads, step_grads):
        torch.testing.assert_close(a, b, atol=2e-2, rtol=2e-2)
