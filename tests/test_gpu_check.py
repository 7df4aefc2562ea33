"""`make gpu-check` where there is no GPU: its script says so in one line, the GPU benchmark runs
on the CPU with tiny sizes, and the inputs of the `cuda` tests that compare the GPU with the CPU
hold no near-tie that another device's rounding could break."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from captionkit.decoding import decode
from captionkit.models.run_folder import load_checkpoint

from test_cuda import (
    BEAM,
    CAPTIONER_SEEDS,
    DECODING_SEEDS,
    GREEDY,
    captions,
    decoding_case,
    seeded_image,
)

ROOT = Path(__file__).resolve().parent.parent
NO_GPU_LINE = "gpu-check: no CUDA GPU on this machine; nothing to check\n"


@pytest.mark.skipif(torch.cuda.is_available() or shutil.which("nvidia-smi") is not None,
                    reason="this machine has a GPU (or nvidia-smi): gpu-check would install "
                    "and run")  # fmt: skip
def test_gpu_check_without_a_gpu_says_so_in_one_line_and_exits_0(tmp_path):
    venv = tmp_path / "venv"
    env = {**os.environ, "PYTHON": sys.executable, "VENV": str(venv)}  # a Python with torch
    done = subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh")], env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert (done.returncode, done.stdout, done.stderr) == (0, NO_GPU_LINE, "")
    assert not venv.exists()  # nothing installed
    if shutil.which("make"):  # and `make gpu-check` is that script
        dry = subprocess.run(["make", "-n", "gpu-check"], cwd=ROOT, capture_output=True, text=True)
        assert dry.returncode == 0 and "bash bench/gpu_check.sh" in dry.stdout


def test_gpu_benchmark_runs_on_the_cpu_with_tiny_sizes(tmp_path, monkeypatch):
    """bench/bench_gpu.py --quick on the CPU: every section, for two of the models (the GPU run
    does all), its JSON and markdown written."""
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    import bench_gpu

    out = tmp_path / "results" / "gpu.json"
    argv = ["--quick", "--device", "cpu", "--models", "attention,show_tell", "--output", str(out)]
    results = bench_gpu.run(bench_gpu.parse_args(argv))
    assert json.loads(out.read_text()) == json.loads(json.dumps(results))
    training = results["training"]
    for name in ("attention", "show_tell"):
        for precision in ("32", "bf16-mixed"):
            x = training[name][precision]
            assert x["captions_s"] > 0 and 0 < x["gpu_busy"] <= 1, x
            assert 0 < x["flickr8k_epoch_min"] < x["coco_epoch_min"]
        assert training[name]["batch_size"] == 8 and training[name]["loader_ms_per_batch"] > 0
        for batch in ("3", "6"):
            for how in ("plain", "consensus"):
                assert results["decoding"][name][batch][how]["images_s"] > 0
    assert set(results["extraction"]) >= {"forward_fp32", "forward_bf16",
                                          "pipeline_fp32_0_workers"}  # fmt: skip
    table = out.with_suffix(".md").read_text()
    assert "| attention | 8 | bf16-mixed |" in table and "| show_tell |" in table
    assert "| forward_bf16 |" in table and "Cut short" not in table


def perturbed(x: torch.Tensor, relative: float, generator: torch.Generator) -> torch.Tensor:
    return x * (1 + relative * torch.randn(x.shape, generator=generator))


def assert_no_near_tie(model, pooled, grid, relative: float, draws: int = 4) -> None:
    """The captions of greedy and beam decoding stay the same when the features move by
    `relative` in random directions: no decision of the search is closer than that."""
    generator = torch.Generator().manual_seed(0)
    for options in (GREEDY, BEAM):
        expected = captions(decode(model, pooled, grid, options))
        for _ in range(draws):
            nudged = (perturbed(x, relative, generator) for x in (pooled, grid))
            assert captions(decode(model, *nudged, options)) == expected, options.describe()


@pytest.mark.parametrize("name", sorted(DECODING_SEEDS))
def test_cuda_decoding_cases_hold_no_near_tie(name):
    assert_no_near_tie(*decoding_case(name), relative=1e-3)


def test_cuda_captioner_images_hold_no_near_tie(indexed_run, lite0):
    trained = load_checkpoint(indexed_run)
    transform = lite0.transform()
    pixels = torch.stack([transform(seeded_image(s)) for s in CAPTIONER_SEEDS])
    with torch.no_grad():
        pooled, grid = lite0(pixels)
    assert_no_near_tie(trained.model, pooled, grid, relative=1e-3)
