"""Faster CPU inference (`--quantize int8|bf16`): every decoder quantizes and decodes close to its
float32 self; the Captioner and the CLI run it; a mode the machine cannot run is refused."""

import pytest
import torch
from torch.ao.nn.quantized import dynamic as qdynamic

from captionkit.cli import main
from captionkit.decoding import DecodingOptions, decode
from captionkit.encoders.extraction import native_bf16
from captionkit.errors import CaptionkitError
from captionkit.evaluation.captioner import Captioner
from captionkit.models import MODELS, create_model
from captionkit.models import quantize as q

from conftest import TINY, write_images

V, D, L = 40, 24, 9


def _model(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    model = create_model(name, vocab_size=V, feature_dim=D, **TINY[name]).eval()
    with torch.no_grad():  # a trained model's logits are peaked: margins well above int8 noise
        for p in model.parameters():
            p.mul_(3.0)
    return model


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_decoder_quantizes_to_int8_and_decodes_as_in_float32(name):
    model = _model(name)
    quantized = q.quantize_decoder(model, "int8")
    kinds = {type(m) for m in quantized.modules()}
    assert kinds & {qdynamic.Linear, qdynamic.LSTM, qdynamic.LSTMCell, qdynamic.GRU}, kinds
    for layer_name, layer in model.named_modules():  # int8 Linear weights: a scale per row
        if isinstance(layer, torch.nn.Linear):
            twin = quantized.get_submodule(layer_name)
            if layer.out_features < q.FEW_OUTPUTS:  # an attention's score: float32
                assert type(twin) is torch.nn.Linear, layer_name
            else:
                assert twin.weight().qscheme() == torch.per_channel_affine, layer_name
    assert not any(isinstance(m, qdynamic.Linear) for m in model.modules())  # a copy
    torch.manual_seed(1)
    pooled, grid = torch.randn(16, D), torch.randn(16, L, D)
    with torch.no_grad():
        tokens = torch.randint(4, V, (16,))
        ours = model.step(tokens, model.init_state(pooled, grid)).logits
        theirs = quantized.step(tokens, quantized.init_state(pooled, grid)).logits
    # int8 weights (one scale per tensor) and activations (per batch): the logits move by about
    # 1% of their spread, which flips only near-ties.
    assert torch.corrcoef(torch.stack([ours.flatten(), theirs.flatten()]))[0, 1] > 0.995
    assert (ours.argmax(1) == theirs.argmax(1)).sum() >= 15
    options = DecodingOptions(beam_size=3, max_length=8)
    with torch.no_grad():
        a = [h[0].tokens for h in decode(model, pooled, grid, options)]
        b = [h[0].tokens for h in decode(quantized, pooled, grid, options)]
    # Random weights have flatter distributions than trained ones: whole captions agree less.
    assert sum(x == y for x, y in zip(a, b)) >= 8, (a, b)


def test_modes_a_machine_cannot_run_are_refused(monkeypatch):
    with pytest.raises(CaptionkitError, match="--quantize int4: expected none, int8, bf16"):
        q.check_quantize("int4")
    monkeypatch.setattr(q, "native_bf16", lambda device="cpu": False)
    monkeypatch.setattr(q, "fast_bf16", lambda device="cpu": False)
    with pytest.raises(CaptionkitError, match="no native bf16"):
        q.check_quantize("bf16")
    assert q.check_quantize("int8") == "int8"
    # Without native bf16, int8 runs the encoder in float32: no autocast at all.
    assert q.encoder_amp("int8") is None and q.encoder_amp("bf16") is None
    assert q.decoder_precision("none").__class__ is q.decoder_precision("int8").__class__


def test_the_captioner_and_the_cli_caption_with_int8(tiny_attention_run, tmp_path, capsys):
    write_images(tmp_path, ["a.png", "b.png"], size=64)
    files = [tmp_path / "a.png", tmp_path / "b.png"]
    plain = Captioner.load(tiny_attention_run).caption(files)
    int8 = Captioner.load(tiny_attention_run, quantize="int8")
    assert any(isinstance(m, qdynamic.Linear) for m in int8.models[0].modules())
    captions = int8.caption(files)
    assert len(captions) == 2 and all(c[0].text for c in captions)
    assert [c[0].score for c in captions] == pytest.approx([c[0].score for c in plain], rel=0.1)
    argv = ["caption", "--checkpoint", str(tiny_attention_run), *map(str, files)]
    assert main([*argv, "--quantize", "int8"]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 2
    assert main([*argv, "--quantize", "int4"]) == 1
    assert "--quantize int4: expected none, int8, bf16" in capsys.readouterr().err


@pytest.mark.skipif(not native_bf16(), reason="this CPU has no native bf16 (AVX512-BF16 or AMX)")
def test_bf16_captions_with_the_weights_as_they_are(tiny_attention_run, tmp_path):
    write_images(tmp_path, ["a.png"], size=64)
    captioner = Captioner.load(tiny_attention_run, quantize="bf16")
    assert all(p.dtype == torch.float32 for p in captioner.models[0].parameters())
    assert captioner.caption([tmp_path / "a.png"])[0][0].text


def test_bf16_is_chosen_only_where_the_cpu_runs_it_faster(monkeypatch):
    import captionkit.encoders.extraction as extraction

    monkeypatch.setattr(extraction, "native_bf16", lambda device="cpu": False)
    monkeypatch.setattr(extraction, "cpu_bf16_speedup", lambda: pytest.fail("probed"))
    assert not extraction.fast_bf16("cpu")  # emulated bf16: no probe needed
    monkeypatch.setattr(extraction, "native_bf16", lambda device="cpu": True)
    monkeypatch.setattr(q, "native_bf16", lambda device="cpu": True)
    for speedup, fast in ((0.6, False), (1.1, False), (1.8, True)):  # 0.6: a Xeon without AMX
        monkeypatch.setattr(extraction, "cpu_bf16_speedup", lambda s=speedup: s)
        assert extraction.fast_bf16("cpu") is fast
        monkeypatch.setattr(q, "fast_bf16", extraction.fast_bf16)
        assert q.encoder_amp("int8") == ("bf16" if fast else None)
        assert q.encoder_amp("bf16") == "bf16" and q.encoder_amp("none") is None


@pytest.mark.skipif(not native_bf16(), reason="this CPU has no native bf16 (AVX512-BF16 or AMX)")
def test_the_bf16_probe_times_both_precisions():
    from captionkit.encoders.extraction import cpu_bf16_speedup

    first = cpu_bf16_speedup()
    assert 0.05 < first < 20  # a ratio of two timings of the same product, not a stub
    assert cpu_bf16_speedup() == first  # measured once per process
