"""The HTML evaluation report, attention maps and the run comparison, on a tiny attention model
trained on generated shapes; the page is also rendered in headless Chromium."""

import base64
import csv
import dataclasses
import html
import io
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from captionkit.cli import main
from captionkit.data import tokenize
from captionkit.data.ptb_tokenizer import detokenize
from captionkit.data.shapes import make_shapes
from captionkit.evaluation.evaluate import evaluate_run
from captionkit.metrics.coco_metrics import METRIC_KEYS
from captionkit.models import create_model
from captionkit.models.run_folder import load_checkpoint, save_checkpoint
from captionkit.reporting.pictures import heat_overlay
from captionkit.reporting.plots import draw_chart, nice_ticks, training_charts
from captionkit.reporting.report import (
    ReportSettings,
    _metrics_table,
    build_report,
    per_image_cider,
)
from captionkit.training import DataConfig, RunConfig
from captionkit.training.train import train

from conftest import CHECKER


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """(shapes folder, run folder, its evaluation on the test split, the report file)."""
    root = tmp_path_factory.mktemp("report")
    make_shapes(root / "shapes", n_images=30, seed=3)
    tiny = {"hidden_dim": 16, "embed_dim": 16, "attention_dim": 16}
    config = RunConfig(model="attention", data=DataConfig(str(root / "shapes"), min_count=1),
                       model_args=tiny)  # fmt: skip
    config.train.epochs, config.train.batch_size = 2, 32
    train(config, root / "run")
    report = root / "report.html"
    argv = ["evaluate", "--checkpoint", str(root / "run"), "--data", str(root / "shapes"),
            "--beam-size", "2", "--report", str(report)]  # fmt: skip
    results = []

    def evaluate_without_meteor(*args, **kwargs):  # METEOR's Java start-up alone takes ~20 s
        results.append(evaluate_run(*args, **kwargs, meteor=False))
        return results[-1]

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("captionkit.evaluation.evaluate.evaluate_run", evaluate_without_meteor)
        assert main(argv) == 0
    return root / "shapes", root / "run", results[0], report


class _Images(HTMLParser):
    """The `src` of every <img> of a page, and its text."""

    def __init__(self):
        super().__init__()
        self.sources, self.text = [], []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.sources.append(dict(attrs)["src"])

    def handle_data(self, data):
        self.text.append(data)


def _parse(page: str) -> _Images:
    parser = _Images()
    parser.feed(page)
    return parser


@pytest.mark.slow
def test_per_image_cider_is_pycocoevalcaps(run):
    from pycocoevalcap.cider.cider import Cider

    *_, evaluation, _ = run
    scores = per_image_cider(evaluation)
    keys = sorted(evaluation.predictions)
    gts = {k: [" ".join(tokenize(c)) for c in evaluation.references[k]] for k in keys}
    res = {k: [" ".join(tokenize(evaluation.predictions[k]))] for k in keys}
    _, expected = Cider().compute_score(gts, res)
    assert [scores[k] for k in keys] == pytest.approx(list(expected), abs=1e-9)


@pytest.mark.slow
def test_report_shows_every_section_and_image(run):
    _, run_dir, evaluation, report = run
    page = report.read_text()
    parsed = _parse(page)
    n = len(evaluation.predictions)
    attended = load_checkpoint(run_dir)  # per-word maps: one tile per token, plus the image
    assert n >= 3 and attended.model.uses_grid
    for title in ("Metrics", "Training curves", f"Best {n} by CIDEr-D", f"Worst {n} by CIDEr-D",
                  "Where the model looked", f"All images ({n} of {n})"):  # fmt: skip
        assert f"<h2>{title}</h2>" in page
    heat_rows = page.count('class="heatrow"')
    assert heat_rows == 2 * min(ReportSettings.attention_images, n // 2)
    tiles = page.count('class="heat"')
    assert len(parsed.sources) == 2 + 3 * n + tiles  # 2 charts, best, worst, all, heat maps
    for src in parsed.sources:  # every image is embedded and decodes
        mime, data = re.fullmatch(r"data:image/(jpeg|png);base64,(.+)", src).groups()
        assert Image.open(io.BytesIO(base64.b64decode(data))).format == mime.upper()
    for name, caption in evaluation.predictions.items():
        assert name in page and html.escape(detokenize(caption) or "(empty caption)") in page


@pytest.mark.slow
def test_report_escapes_text_and_needs_no_training_logs(run, tmp_path):
    _, run_dir, evaluation, _ = run
    bare = tmp_path / "bare-run"
    shutil.copytree(run_dir, bare, ignore=shutil.ignore_patterns("metrics.jsonl", "logs"))
    name = sorted(evaluation.references)[0]
    hostile = {**evaluation.references, name: ["<script>alert('x')</script> & a square"]}
    evaluation = dataclasses.replace(evaluation, references=hostile)
    settings = ReportSettings(max_images=1, extremes=1, attention_images=0)
    page = build_report(bare, evaluation, "test", _options(), settings,
                        described="beam 2, rerank consensus <k 5>")  # fmt: skip
    assert "decoding: beam 2, rerank consensus &lt;k 5&gt;;" in page
    assert "<script>" not in page and "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
    assert "No training logs in the run folder" in page and "Where the model looked" not in page
    assert len(_parse(page).sources) == 3  # best 1, worst 1, all images: the first 1


def _options():
    from captionkit.decoding import DecodingOptions

    return DecodingOptions(beam_size=2)


@pytest.mark.slow
def test_training_charts_from_the_run_logs(run):
    _, run_dir, *_ = run
    loss, val = training_charts(run_dir)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [s.label for s in val.series] == ["CIDEr", "BLEU-4"]
    assert val.series[0].xs == [r["epoch"] for r in rows]
    assert val.series[0].ys == [r["val/CIDEr"] for r in rows]
    assert loss.series[-1].ys == [r["train/loss"] for r in rows]
    assert draw_chart(loss).size == (960, 600)


def test_nice_ticks_are_round_and_cover_the_range():
    assert nice_ticks(0.13, 0.87) == [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    assert nice_ticks(0, 460) == [0, 100, 200, 300, 400, 500]
    assert nice_ticks(5, 5) == [5, 6, 7, 8, 9, 10]  # one point: a range around it


def test_heat_map_is_bright_where_the_model_looked():
    image = np.full((64, 64, 3), 128, dtype=np.uint8)
    attention = np.zeros((4, 4), dtype=np.float32)
    attention[0, 0] = 1.0  # all weight on the top-left cell
    tile = np.asarray(heat_overlay(image, attention, size=64), dtype=np.float32).sum(axis=2)
    assert tile[:12, :12].mean() > 1.5 * tile[-16:, -16:].mean()
    flat = np.asarray(heat_overlay(image, np.full((4, 4), 1 / 16), size=64), dtype=np.float32)
    assert flat.std(axis=(0, 1)).max() < 1.0  # a uniform map is a uniform tint, not magnified noise


@pytest.mark.slow
def test_caption_attention_map(run, tmp_path, capsys):
    shapes, run_dir, *_ = run
    image = sorted((shapes / "Images").iterdir())[0]
    out = tmp_path / "att.png"
    argv = ["caption", "--checkpoint", str(run_dir), "--beam-size", "1",
            "--attention-map", str(out), str(image)]  # fmt: skip
    assert main(argv) == 0
    tokens = capsys.readouterr().out.split(": ", 1)[1].split(" -> ")[0].split()
    tiles = 1 + len(tokens)  # the image, then one map per token, 6 to a row of 166 px
    rows, cols = (tiles + 5) // 6, min(tiles, 6)
    assert Image.open(out).size == (cols * 166 + 6, rows * (166 + 26) + 6)
    assert main(argv + [str(image)]) == 1
    assert "error: --attention-map takes one image, not 2" in capsys.readouterr().err


@pytest.fixture(scope="module")
def show_tell_run(run, tmp_path_factory):
    """An untrained Show-and-Tell run on the same vocabulary and encoder (never evaluated)."""
    _, run_dir, *_ = run
    trained = load_checkpoint(run_dir)
    folder = tmp_path_factory.mktemp("show-tell")
    sizes = {"feature_dim": trained.model.config.feature_dim, "hidden_dim": 8, "embed_dim": 8}
    model = create_model("show_tell", vocab_size=len(trained.vocab), **sizes)
    extra = {"run": {**trained.config["run"], "model": "show_tell"}}
    save_checkpoint(folder, model, "show_tell", trained.vocab, trained.encoder, extra)
    return folder


@pytest.mark.slow
def test_attention_map_of_a_model_without_attention_is_an_error(run, show_tell_run, capsys):
    shapes, *_ = run
    image = sorted((shapes / "Images").iterdir())[0]
    argv = ["caption", "--checkpoint", str(show_tell_run), "--attention-map", "x.png", str(image)]
    assert main(argv) == 1
    assert "error: model 'show_tell' has no attention over the image to show" in (
        capsys.readouterr().err
    )


@pytest.mark.slow
def test_compare_runs(run, show_tell_run, tmp_path, capsys):
    _, run_dir, *_ = run
    saved = json.loads((run_dir / "eval_test.json").read_text())
    assert saved["split"] == "test"  # evaluate's default re-ranks a run trained with an index
    # --beam-size 2, widened to the 8 candidates that consensus re-ranks: the beam that ran
    assert saved["decoding"] == "beam 8, rerank consensus (8 candidates, weight 0.3, k=60)"
    for suffix in ("csv", "json", "md"):
        out = tmp_path / f"table.{suffix}"
        assert main(["compare", str(show_tell_run), str(run_dir), "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"note: {show_tell_run} has no eval_test.json" in printed
    assert (tmp_path / "table.md").read_text() in printed
    rows = list(csv.DictReader(io.StringIO((tmp_path / "table.csv").read_text())))
    assert [r["run"] for r in rows] == [str(run_dir), str(show_tell_run)]  # evaluated first
    assert [r["model"] for r in rows] == ["attention", "show_tell"]
    assert float(rows[0]["CIDEr"]) == pytest.approx(saved["metrics"]["CIDEr"])
    assert rows[1]["CIDEr"] == "" and rows[0]["model.hidden_dim"] == "16"
    table = json.loads((tmp_path / "table.json").read_text())
    assert table[0]["BLEU-4"] == saved["metrics"]["BLEU-4"] and table[1]["BLEU-4"] is None
    assert main(["compare", str(run_dir), "--output", str(tmp_path / "t.xlsx")]) == 1
    assert "unknown table format (use .md, .csv or .json)" in capsys.readouterr().err


@pytest.mark.slow
def test_report_renders_in_headless_chromium(chromium, run, tmp_path):  # no browser: no training
    *_, report = run
    page = report.read_text()
    checked = tmp_path / "checked.html"
    checked.write_text(page.replace("<head>", "<head>" + CHECKER, 1))
    argv = [chromium, "--headless", "--disable-gpu", "--no-sandbox", "--enable-logging=stderr",
            "--v=0", "--virtual-time-budget=10000", "--dump-dom", checked.as_uri()]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    title = re.search(r"<title>(CHECKED .*?)</title>", done.stdout)
    assert title, f"the page did not finish loading: {done.stderr[-2000:]}"
    expected = len(_parse(page).sources)
    assert title.group(1) == f"CHECKED {expected} images; []"
    console = [line for line in done.stderr.splitlines() if "CONSOLE" in line]
    assert console == []


@pytest.mark.slow
def test_compare_fills_in_defaults_of_settings_older_runs_lack(show_tell_run, tmp_path, capsys):
    old = tmp_path / "old-run"
    shutil.copytree(show_tell_run, old)
    config = json.loads((old / "config.json").read_text())
    del config["run"]["optim"]  # saved before the optimizer settings existed: all defaults
    del config["model"]["config"]["dropout"]
    (old / "config.json").write_text(json.dumps(config))
    out = tmp_path / "t.json"
    assert main(["compare", str(show_tell_run), str(old), "--output", str(out)]) == 0
    assert list(json.loads(out.read_text())[0]) == ["run", "model", "encoder", "best val CIDEr",
                                                    "epoch", "decoding", *METRIC_KEYS]  # fmt: skip


@pytest.mark.slow
def test_report_of_an_ensemble_shows_its_runs_and_its_attention(run):
    _, run_dir, evaluation, _ = run
    page = build_report([run_dir, run_dir], evaluation, "test", _options(),
                        ReportSettings(max_images=2, extremes=2, attention_images=1))  # fmt: skip
    assert "<h1>ensemble of 2 runs</h1>" in page and f"runs: {run_dir}, {run_dir}" in page
    assert page.count("<h3>") == 2 and page.count('class="charts"') == 2  # each run's curves
    assert "Where the model looked" in page and page.count('class="heatrow"') == 2


def test_metrics_table_says_which_epochs_the_kept_weights_are_of():
    metrics = SimpleNamespace(metrics={"CIDEr": 0.5})
    best = _metrics_table(metrics, {"metrics": {"val/CIDEr": 0.41, "epoch": 19}}, 0.5)
    assert "<th>best val CIDEr (epoch 19)</th><td>0.4100</td>" in best
    row = {"val/CIDEr": 0.42, "epoch": 29, "averaged_epochs": 5}  # `--average-last 5`'s last row
    mean = _metrics_table(metrics, {"metrics": row}, 0.5)
    assert "<th>val CIDEr (the mean of epochs 25-29)</th><td>0.4200</td>" in mean
    assert "val CIDEr" not in _metrics_table(metrics, {}, 0.5)  # a run without validation
    bare = _metrics_table(metrics, {"metrics": {"val/CIDEr": 0.4}}, 0.5)  # no epoch recorded
    assert "<th>best val CIDEr</th><td>0.4000</td>" in bare
