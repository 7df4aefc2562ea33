"""Shared fixtures: a private feature cache and tiny datasets written by the tests themselves."""

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import lightning.pytorch  # noqa: F401  (see below)
import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from PIL import Image

# Lightning gives its logger a StreamHandler on the sys.stderr of its first import. Imported here,
# that is the session's capture, open to the end; imported inside a test that captures output
# (capfd), it is that test's stream, closed after it, and every later test that trains logs
# "--- Logging error ---" tracebacks into its output.

# Fuzzing profiles (tests/test_fuzz.py): `quick` in the suite, `fuzz` for `make fuzz`. No deadline
# per example (a loaded machine must not fail them); a hang shows as the suite's own timeout.
_FUZZ = {"deadline": None, "suppress_health_check": list(HealthCheck), "database": None}
settings.register_profile("quick", max_examples=25, **_FUZZ)
settings.register_profile("fuzz", max_examples=1500, **_FUZZ)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "quick"))


@pytest.fixture(autouse=True, scope="session")
def _feature_cache(tmp_path_factory):
    """Keep the tests' feature stores out of the user's ~/.cache."""
    mp = pytest.MonkeyPatch()
    mp.setenv("CAPTIONKIT_CACHE", str(tmp_path_factory.mktemp("feature-cache")))
    yield
    mp.undo()


@pytest.fixture(scope="session")
def lite0():
    """The default encoder with its packaged ImageNet weights, loaded once for all tests."""
    from captionkit.encoders import create_encoder

    return create_encoder()


FAULT_DRIVER = Path(__file__).with_name("fault_driver.py")


def start_captionkit(args: list, log: Path, fault: str | None = None,
                     env: dict | None = None) -> subprocess.Popen:  # fmt: skip
    """`captionkit ARGS` in a new process, with `fault` ("KILL step 1 9", see fault_driver.py),
    its output (and its DDP ranks') into the file `log`: a pipe, once full, would stall it, and
    the other ranks with it at their next collective."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1",
           **(env or {})}  # fmt: skip
    if fault is None:
        cmd = [sys.executable, "-m", "captionkit", *map(str, args)]
    else:
        cmd, env["CAPTIONKIT_FAULT"] = [sys.executable, str(FAULT_DRIVER), *map(str, args)], fault
    with open(log, "w") as f:
        return subprocess.Popen(cmd, env=env, stdout=f, stderr=subprocess.STDOUT)


def run_captionkit(args: list, log: Path, fault: str | None = None, env: dict | None = None,
                   timeout: float = 600) -> tuple[int, str]:  # fmt: skip
    """`start_captionkit` to its end: (exit code, output)."""
    process = start_captionkit(args, log, fault, env)
    try:
        return process.wait(timeout), log.read_text()
    finally:
        process.kill()


def process_state(pid: int) -> str:
    """The state letter of process `pid` in /proc (R running, S sleeping, T stopped, Z ended
    but not reaped by its parent)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def metrics_rows(run: Path) -> list[dict]:
    """A run's metrics.jsonl, less the wall-clock times (`elapsed_s`)."""
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "elapsed_s"} for r in rows]


def assert_same_run(run: Path, reference: Path) -> None:
    """`run` (e.g. resumed after a fault) ended with the metrics, exported weights and last
    training state of `reference`, exactly."""
    import torch
    from safetensors.torch import load_file

    from captionkit.training.resume_checkpoints import load_state

    assert metrics_rows(run) == metrics_rows(reference)
    ours, theirs = load_file(run / "model.safetensors"), load_file(reference / "model.safetensors")
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)
    ours = load_state(run / "checkpoints" / "last.safetensors")["state_dict"]
    theirs = load_state(reference / "checkpoints" / "last.safetensors")["state_dict"]
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)


def write_images(folder: Path, names: list[str], size: int = 48, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        pixels = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / name)


CAPTIONS = {
    "a.jpg": ["A dog runs, fast.", "a brown dog running"],
    "b.jpg": ["Two cats sit on a mat.", "cats, resting"],
    "c.jpg": ["A red car.", "a car parked on the street"],
    "d.jpg": ["A man rides a bike.", "cyclist on a road"],
}


@pytest.fixture
def kaggle_dataset(tmp_path) -> Path:
    """Flickr8k Kaggle layout: captions.txt (CSV, quoted commas) and Images/."""
    write_images(tmp_path / "Images", list(CAPTIONS))
    with open(tmp_path / "captions.txt", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "caption"])
        for image, captions in CAPTIONS.items():
            writer.writerows([image, c] for c in captions)
    return tmp_path


@pytest.fixture
def karpathy_dataset(tmp_path) -> Path:
    """Karpathy split file with splits, including `restval`, and images in Images/."""
    write_images(tmp_path / "Images", list(CAPTIONS))
    splits = ["train", "restval", "val", "test"]
    images = [
        {"filename": name, "split": split, "sentences": [{"raw": c} for c in caps]}
        for (name, caps), split in zip(CAPTIONS.items(), splits)
    ]
    (tmp_path / "dataset_tiny.json").write_text(json.dumps({"images": images}))
    return tmp_path


# Tiny settings of every registered model, for tests that need one of each (their fast variants).
TINY = {
    "show_tell": {"hidden_dim": 16, "embed_dim": 16},
    "attention": {"hidden_dim": 16, "embed_dim": 16, "attention_dim": 16},
    "updown": {"hidden_dim": 16, "embed_dim": 16, "attention_dim": 16},
    "transformer": {"d_model": 16, "n_heads": 2, "n_layers": 1, "d_ff": 32},
}

SHAPE_WORDS = "a red blue green circle square triangle on the left right of big small".split()


def _tiny_run(folder: Path, name: str, encoder) -> Path:
    """An untrained run of model `name` (tiny, random weights, on `encoder`) with a test
    evaluation on record: for serving and export tests, which need a model, not a good one."""
    import torch

    from captionkit.data.vocab import Vocabulary
    from captionkit.models import create_model
    from captionkit.models.run_folder import save_checkpoint
    from captionkit.reporting.compare import save_run_evaluation

    torch.manual_seed(0)
    vocab = Vocabulary(SHAPE_WORDS)
    sizes = {"hidden_dim": 16, "embed_dim": 16, "attention_dim": 16}
    model = create_model(name, vocab_size=len(vocab), feature_dim=encoder.feature_dim, **sizes)
    info = {"name": encoder.name, "weights": "default", "fingerprint": encoder.fingerprint()}
    extra = {"run": {"model": name, "data": {"max_length": 8}}}
    with torch.no_grad():  # random weights often end at once: make <eos> unlikely, for words
        model.head.bias[Vocabulary.eos_id] = -3.0
    save_checkpoint(folder, model.eval(), name, vocab, info, extra)
    save_run_evaluation(folder, "test", {"BLEU-4": 0.125, "CIDEr": 0.5}, 3, "beam 3", "shapes")
    return folder


@pytest.fixture(scope="session")
def tiny_attention_run(tmp_path_factory, lite0) -> Path:
    """A tiny untrained Show-Attend-Tell run (`_tiny_run`)."""
    return _tiny_run(tmp_path_factory.mktemp("tiny-attention"), "attention", lite0)


@pytest.fixture(scope="session")
def tiny_updown_run(tmp_path_factory, lite0) -> Path:
    """A tiny untrained top-down attention run (`_tiny_run`)."""
    return _tiny_run(tmp_path_factory.mktemp("tiny-updown"), "updown", lite0)


@pytest.fixture(scope="session")
def indexed_run(tiny_attention_run, lite0, tmp_path_factory) -> Path:
    """The tiny attention run, copied, with a neighbour index of 30 images of shape captions
    (for re-ranking by consensus)."""
    import random

    from captionkit.reranking import write_neighbour_index

    run = tmp_path_factory.mktemp("indexed") / "run"
    shutil.copytree(tiny_attention_run, run)
    rng = random.Random(0)
    words = [w for w in SHAPE_WORDS if w not in ("a", "the")]
    captions = [[f"a {' '.join(rng.sample(words, 4))}" for _ in range(3)] for _ in range(30)]
    pooled = np.random.default_rng(0).random((30, lite0.feature_dim), dtype=np.float32)
    write_neighbour_index(run, pooled, [f"{i}.png" for i in range(30)], captions,
                          lite0.fingerprint())  # fmt: skip
    return run


ATTENDING_RUNS = {"attention": "tiny_attention_run", "updown": "tiny_updown_run"}
"""Registered models that attend (`attends = True`) -> the fixture of a tiny run of each."""


# pycocoevalcap's PTB tokenizer, METEOR and SPICE are Java programs, found on PATH as the
# evaluation code finds them. Every test that needs one skips for this one reason without it.
requires_java = pytest.mark.skipif(
    shutil.which("java") is None,
    reason="java is not on PATH (pycocoevalcap's PTB tokenizer, METEOR and SPICE need it)",
)


def _missing(what: str, install: str):
    """Skip a browser test on a developer's machine; fail it in CI (CI=true), where `.ci/run`
    installs the browser first: a broken install must not pass as a skip."""
    message = f"{what} is not installed ({install}, or `make browser` as root)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true but {message}", pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def chromium() -> str:
    """The system's headless Chromium, for the tests that render pages."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        _missing("chromium", "Debian: apt-get install chromium")
    return found


@pytest.fixture(scope="session")
def chromedriver(chromium) -> str:
    """Chromium's WebDriver (and Selenium), for the tests that click through a page."""
    found = shutil.which("chromedriver")
    if found is None:
        _missing("chromedriver", "Debian: apt-get install chromium-driver")
    try:
        import selenium  # noqa: F401
    except ImportError:
        _missing("selenium", "pip install -e '.[dev]'")
    return found


# Loaded before a page's own scripts: after loading, record every broken image and every error
# (uncaught or console.error) in the page title, which --dump-dom then prints; the list stays
# readable as the global `problems` (e.g. from Selenium).
CHECKER = """<script>
const problems = [];
window.addEventListener("error", e => problems.push("error: " + e.message));
const consoleError = console.error;
console.error = (...args) => {
  problems.push("console: " + args.join(" "));
  consoleError(...args);
};
window.addEventListener("load", () => {
  const images = [...document.images];
  images.filter(im => !im.complete || im.naturalWidth === 0)
        .forEach(im => problems.push("broken image: " + im.alt));
  document.title = "CHECKED " + images.length + " images; " + JSON.stringify(problems);
});
</script>"""


class SizedCorpus(list):
    """A list whose len() is the corpus size: pycocoevalcap takes log(len(crefs)) as log N, so a
    reference scorer with document frequencies from another corpus needs this for its crefs."""

    def __init__(self, items, size):
        super().__init__(items)
        self.size = size

    def __len__(self):
        return self.size


def pycocoevalcap_cider(hyp: str, refs: list[str], corpus: list[list[str]]) -> float:
    """pycocoevalcap's CIDEr-D of `hyp` against `refs`, document frequencies from `corpus` (one
    list of captions per image), all tokenized texts."""
    from pycocoevalcap.cider.cider_scorer import CiderScorer

    counted = CiderScorer(n=4, sigma=6.0)
    for captions in corpus:
        counted += (captions[0], captions)
    counted.compute_doc_freq()
    scorer = CiderScorer(n=4, sigma=6.0)
    scorer += (hyp, refs)
    scorer.document_frequency = counted.document_frequency
    scorer.crefs = SizedCorpus(scorer.crefs, len(corpus))
    return float(scorer.compute_cider()[0])
