"""The GPU paths: mixed-precision training of every model, decoding on CUDA against the CPU,
autocast extraction, the Python API and the HTTP service on CUDA, and NCCL DDP. Every test is
marked `cuda` and skips without a CUDA device; `make gpu-check` runs them (`pytest -m cuda`) on a
machine that has one. The ones that train are also marked `slow`, as on the CPU."""

import copy
import io
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from captionkit.cli import main
from captionkit.data import load_dataset
from captionkit.data.shapes import make_shapes
from captionkit.decoding import DecodingOptions, decode
from captionkit.encoders import FeatureStore, extract_features
from captionkit.evaluation.captioner import Captioner
from captionkit.models import MODELS, create_model
from captionkit.reranking import RerankOptions
from captionkit.training import DataConfig, RunConfig
from captionkit.training.module import CaptioningModule
from captionkit.training.train import train

from conftest import TINY

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(
        not torch.cuda.is_available(), reason="needs a CUDA GPU (make gpu-check runs these on one)"
    ),
]


@pytest.fixture
def float32_cuda():
    """True float32 on the GPU while a test compares it with the CPU: cuBLAS and cuDNN may
    otherwise compute float32 products in TF32 (a 10-bit mantissa, ~1e-3 relative error),
    which is the GPU's default for convolutions and recurrent layers, not a difference of ours."""
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
             torch.get_float32_matmul_precision())  # fmt: skip
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved[:2]
    torch.set_float32_matmul_precision(saved[2])


# --- training under mixed precision --------------------------------------------------------------


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cuda-shapes")
    make_shapes(folder, n_images=20, seed=3)  # 16 training images, 80 captions
    return folder


@pytest.fixture
def steps(monkeypatch):
    """What every training step of `CaptioningModule` did: its loss, the dtype of the logits
    (autocast's), and whether all gradients were finite, read where Lightning hands them to the
    optimizer (`on_before_optimizer_step`: after the fp16 gradient scaler unscaled them)."""
    seen = {"loss": [], "logits": set(), "finite": [], "devices": set()}
    step = CaptioningModule.training_step

    def logits_dtype(module, inputs, out):
        seen["logits"].add((out[0] if isinstance(out, tuple) else out).dtype)

    def recorded_step(self, batch, batch_idx):
        hook = self.model.register_forward_hook(logits_dtype)
        try:
            loss = step(self, batch, batch_idx)
        finally:
            hook.remove()
        seen["loss"].append(float(loss.detach()))
        return loss

    def before_optimizer_step(self, optimizer):
        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        seen["finite"].append(bool(grads) and all(bool(torch.isfinite(g).all()) for g in grads))
        seen["devices"] |= {g.device.type for g in grads}

    monkeypatch.setattr(CaptioningModule, "training_step", recorded_step)
    monkeypatch.setattr(CaptioningModule, "on_before_optimizer_step", before_optimizer_step)
    return seen


AUTOCAST = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}


@pytest.mark.slow
@pytest.mark.parametrize("precision", sorted(AUTOCAST))
@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_model_trains_under_mixed_precision(name, precision, shapes, steps, tmp_path):
    config = RunConfig(model=name, model_args=TINY[name],
                       data=DataConfig(str(shapes), min_count=1))  # fmt: skip
    config.train.epochs, config.train.batch_size = 2, 16  # 5 steps an epoch
    config.train.accelerator, config.train.precision = "gpu", precision
    config.train.val_beam_size = 3  # validation decodes a beam under autocast too
    best = train(config, tmp_path / "run")
    assert steps["devices"] == {"cuda"} and len(steps["loss"]) == len(steps["finite"]) == 10
    assert steps["logits"] == {AUTOCAST[precision]}  # autocast ran the model
    assert all(np.isfinite(steps["loss"])), steps["loss"]
    if precision == "bf16-mixed":
        assert all(steps["finite"]), steps["finite"]
    else:
        # fp16's gradient scaler starts at 2**16 and, when the scaled gradients overflow, skips
        # that step and halves the scale: an early overflow or two is how it finds its scale;
        # one late in the run, or on the last step, would mean gradients fp16 cannot hold.
        assert all(steps["finite"][3:]), steps["finite"]
    assert np.isfinite(best["val/CIDEr"]) and best["val/images"] > 0
    assert (tmp_path / "run" / "model.safetensors").is_file()


@pytest.mark.slow
def test_ddp_with_nccl_on_two_gpus(shapes, tmp_path):
    if torch.cuda.device_count() < 2:
        pytest.skip(f"needs 2 CUDA GPUs for a 2-process NCCL DDP step; this machine has "
                    f"{torch.cuda.device_count()}")  # fmt: skip
    from test_ddp import _train

    config = RunConfig(model="transformer", model_args=TINY["transformer"],
                       data=DataConfig(str(shapes), min_count=1))  # fmt: skip
    config.train.epochs, config.train.accelerator = 2, "gpu"
    config.to_yaml(tmp_path / "cfg.yaml")
    rows = _train(tmp_path / "cfg.yaml", tmp_path / "two", "--batch-size", "8", "--devices", "2",
                  "--strategy", "ddp")  # fmt: skip
    # 2 ranks x 8 captions a step, 80 captions: 5 steps an epoch; each rank decodes its share of
    # the 2 validation images and the module scores them all.
    assert [r["step"] for r in rows] == [5, 10]
    assert all(np.isfinite(r["train/loss"]) and r["val/images"] == 2 for r in rows), rows


# --- decoding: the GPU finds the CPU's captions ---------------------------------------------------

# Decoding picks the best token (or beams) at every step: a near-tie between two candidates could
# go either way under the GPU's other summation order, a legitimate difference this test must not
# trip on. These seeds give inputs whose captions no perturbation of the features by 1e-3
# (relative) changes on the CPU (tests/test_gpu_check.py checks it, without a GPU), a thousand
# times the ~1e-6 by which float32 kernels of two devices differ: another caption on the GPU is a
# bug. They were also chosen for captions of varied lengths, some ended early by <eos>, and that
# differ between the images (an untrained model often says the same thing of every image).
DECODING_SEEDS = {"attention": 0, "show_tell": 0, "transformer": 1, "updown": 1}
GREEDY = DecodingOptions(beam_size=1, max_length=12)
BEAM = DecodingOptions(beam_size=3, max_length=12, n_best=3)


def decoding_case(name: str) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    """A tiny random model of `name` (eval mode) and features of 4 images (pooled, grid), scaled
    up so that the captions depend on the image."""
    torch.manual_seed(DECODING_SEEDS[name])
    model = create_model(name, vocab_size=12, feature_dim=24, **TINY[name]).eval()
    return model, 3 * torch.randn(4, 24), 3 * torch.randn(4, 9, 24)


def captions(results) -> list[list[list[int]]]:
    return [[h.tokens for h in hyps] for hyps in results]


@pytest.mark.parametrize("name", sorted(MODELS))
def test_gpu_decoding_finds_the_cpu_captions(name, float32_cuda):
    model, pooled, grid = decoding_case(name)
    on_gpu = copy.deepcopy(model).cuda()
    for options in (GREEDY, BEAM):
        cpu = decode(model, pooled, grid, options)
        gpu = decode(on_gpu, pooled.cuda(), grid.cuda(), options)
        assert captions(gpu) == captions(cpu), options.describe()
        # Scores differ by the rounding of float32 logits only: at most 1e-6 between a float32
        # and a float64 model on the CPU, for these cases; 1e-4 leaves a hundredfold margin.
        for a, b in zip(gpu, cpu):
            assert [h.score for h in a] == pytest.approx([h.score for h in b], abs=1e-4)


# --- extraction with autocast ---------------------------------------------------------------------


def _relative_errors(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    return np.linalg.norm(a - b, axis=-1) / np.linalg.norm(b, axis=-1)


def test_extract_command_on_cuda_with_bf16_is_close_to_float32(kaggle_dataset, tmp_path, lite0,
                                                               capsys):  # fmt: skip
    argv = ["extract", "--data", str(kaggle_dataset), "--cache-dir", str(tmp_path / "bf16"),
            "--workers", "0", "--device", "cuda", "--amp", "bf16"]  # fmt: skip
    assert main(argv) == 0
    bf16 = FeatureStore.open(Path(re.search(r"images -> (\S+)", capsys.readouterr().out)[1]))
    dataset = load_dataset(kaggle_dataset)
    paths = [dataset.path(r) for r in dataset.records]
    fp32 = extract_features(lite0, paths, tmp_path / "fp32", num_workers=0, device="cpu")
    # The bounds of the CPU's bf16 test (test_feature_store.py): bf16 keeps 8 bits of mantissa,
    # and EfficientNet-Lite0 amplifies that rounding to a few percent per image (relative L2),
    # the grid more than the pooled mean; > 0: autocast really ran.
    for name, bound in (("pooled", 0.06), ("grid", 0.15)):
        a = getattr(bf16, name)[bf16.rows(paths)]
        error = _relative_errors(a, getattr(fp32, name)[fp32.rows(paths)])
        assert 0 < error.max() < bound, (name, error.max())


# --- the Python API and the HTTP service on CUDA --------------------------------------------------

# Random 64 x 48 images (as test_serving.py's) whose captions by the tiny attention run are no
# near-ties on the CPU: perturbing their features by 1e-3 (relative) changes none of them
# (tests/test_gpu_check.py checks it), ten times what float32 convolutions differ by between
# devices once TF32 is off.
CAPTIONER_SEEDS = (0, 1, 2)


def seeded_image(seed: int) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def test_captioner_on_cuda_finds_the_cpu_captions(indexed_run, float32_cuda):
    images = [seeded_image(s) for s in CAPTIONER_SEEDS]
    cpu, gpu = Captioner.load(indexed_run), Captioner.load(indexed_run, device="cuda")
    assert {p.device.type for m in gpu.models for p in m.parameters()} == {"cuda"}
    plain = RerankOptions("none")
    for options in (GREEDY, BEAM):
        expected = cpu.caption(images, options, rerank=plain)
        found = gpu.caption(images, options, rerank=plain, attention=True)
        assert [[c.text for c in hyps] for hyps in found] == [
            [c.text for c in hyps] for hyps in expected
        ]
        # The features went through the encoder on each device: its float32 convolutions differ
        # by ~1e-5 (relative), which a caption's score sums over up to 13 steps.
        for a, b in zip(found, expected):
            assert [c.score for c in a] == pytest.approx([c.score for c in b], abs=1e-3)
            for c in a:  # attention maps come back from the GPU too, one per word
                assert c.attention.shape == (len(c.tokens), 7, 7)
                np.testing.assert_allclose(c.attention.sum(axis=(1, 2)), 1.0, rtol=1e-5)
    # Consensus re-ranking (the default where the run has a neighbour index) takes the GPU's
    # pooled features to its index on the CPU.
    ranked = gpu.caption(images, DecodingOptions(n_best=2))
    assert [len(hyps) for hyps in ranked] == [2, 2, 2]
    assert all(c.text and np.isfinite(c.score) for hyps in ranked for c in hyps)


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def test_serve_on_cuda_answers_a_request(indexed_run, monkeypatch):
    """`captionkit serve --device cuda` as far as uvicorn, then its app answers a request."""
    import uvicorn

    apps = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **settings: apps.append(app))
    monkeypatch.delenv("CAPTIONKIT_API_KEY", raising=False)
    assert main(["serve", "--checkpoint", str(indexed_run), "--device", "cuda"]) == 0
    (app,) = apps
    captioner = app.state.captioner
    assert {p.device.type for m in captioner.models for p in m.parameters()} == {"cuda"}
    files = [("file", (f"im{s}.png", _png(seeded_image(s)), "image/png")) for s in (0, 1)]
    with TestClient(app) as client:
        response = client.post("/caption", files=files, data={"beam_size": 3, "n_best": 2})
        assert response.status_code == 200, response.text
        body = response.json()
        assert [a["file"] for a in body["images"]] == ["im0.png", "im1.png"]
        assert all(a["caption"] == a["captions"][0]["caption"] for a in body["images"])
        assert client.get("/health").json()["images"] == 2
