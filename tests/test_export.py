"""`captionkit export`: the exported graphs caption exactly as the PyTorch model does, greedy and
beam search, through ONNX Runtime and TorchScript."""

import json

import numpy as np
import pytest
from PIL import Image

from captionkit.cli import main
from captionkit.decoding import DecodingOptions
from captionkit.models import MODELS
from captionkit.models.run_folder import load_checkpoint
from captionkit.serving import Captioner
from captionkit.serving.exported_captioner import load_exported

from conftest import ATTENDING_RUNS

# The state tensors each attending model's `init_state` returns, in order: the manifest's names.
STATE = {
    "attention": ["h", "c", "grid", "grid_att"],
    "updown": ["h_att", "c_att", "h_lang", "c_lang", "grid", "grid_att", "mean"],
}


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(5)
    sizes = [(64, 48), (40, 90), (120, 120)]
    return [Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)) for w, h in sizes]


def test_every_attending_model_has_a_tiny_run():
    attending = {n for n, entry in MODELS.items() if entry.model_class.attends}
    assert set(ATTENDING_RUNS) == set(STATE) == attending


@pytest.mark.parametrize("name", sorted(ATTENDING_RUNS))
@pytest.mark.parametrize(("fmt", "files"), [
    ("onnx", ["tiny.encoder.onnx", "tiny.step.onnx", "tiny.json"]),
    ("torchscript", ["tiny.pt", "tiny.json"]),
])  # fmt: skip
def test_exported_captions_equal_pytorch(request, name, lite0, images, tmp_path, capsys, fmt,
                                         files):  # fmt: skip
    pytest.importorskip("onnxruntime")
    run = request.getfixturevalue(ATTENDING_RUNS[name])
    argv = ["export", "--checkpoint", str(run), "--format", fmt,
            "--out", str(tmp_path / "tiny.onnx")]  # fmt: skip
    assert main(argv) == 0
    assert capsys.readouterr().out.split() == [
        w for f in files for w in ("wrote", str(tmp_path / f))
    ]
    manifest = json.loads((tmp_path / "tiny.json").read_text())
    assert manifest["state"] == STATE[name] and manifest["attends"]
    exported = load_exported(tmp_path / "tiny.json")
    reference = Captioner(load_checkpoint(run), lite0)
    assert exported.attends
    for beam_size, n_best in [(1, 1), (3, 3)]:
        options = DecodingOptions(beam_size=beam_size, n_best=n_best)
        want = reference.caption(images, options, attention=True)
        got = exported.caption(images, options, attention=True)
        for w, g in zip(want, got):  # the exported step returns the attention too
            np.testing.assert_allclose(g[0].attention, w[0].attention, atol=1e-4)
        assert [[h.text for h in hyps] for hyps in got] == [[h.text for h in hyps] for hyps in want]
        scores = [h.score for hyps in got for h in hyps]
        assert scores == pytest.approx([h.score for hyps in want for h in hyps], abs=1e-4)
    assert any(len(hyps[0].text.split()) > 1 for hyps in want)  # real captions were compared


def test_export_refuses_an_unknown_format(tiny_attention_run, tmp_path, capsys):
    argv = ["export", "--checkpoint", str(tiny_attention_run), "--format", "tflite",
            "--out", str(tmp_path / "m")]  # fmt: skip
    assert main(argv) == 1
    assert (
        "error: --format must be one of onnx, torchscript, not 'tflite'" in capsys.readouterr().err
    )


def test_an_int8_onnx_export_runs_in_onnx_runtime(tiny_attention_run, images, tmp_path, capsys):
    import onnx

    plain, int8 = tmp_path / "plain", tmp_path / "int8"
    argv = ["export", "--checkpoint", str(tiny_attention_run), "--format", "onnx"]
    assert main([*argv, "--out", str(plain / "m.onnx")]) == 0
    assert main([*argv, "--out", str(int8 / "m.onnx"), "--quantize", "int8"]) == 0
    step = onnx.load(int8 / "m.step.onnx")
    assert {"MatMulInteger", "DynamicQuantizeLinear"} <= {n.op_type for n in step.graph.node}
    assert json.loads((int8 / "m.json").read_text())["quantize"] == "int8"
    options = DecodingOptions(beam_size=2, max_length=6)
    theirs = load_exported(plain / "m.json").caption(images, options=options)
    ours = load_exported(int8 / "m.json").caption(images, options=options)
    assert [c[0].score for c in ours] == pytest.approx([c[0].score for c in theirs], rel=0.1)
    code = main([*argv, "--format", "torchscript", "--out", str(tmp_path / "t.pt"),
                 "--quantize", "int8"])  # fmt: skip
    assert code == 1 and "export quantizes ONNX graphs" in capsys.readouterr().err
