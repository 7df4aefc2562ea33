"""The CLI: subcommands run through main(argv), and user errors are one line, not a traceback."""

import dataclasses
import json
import logging
import re
import subprocess
import sys
import warnings

import pytest
import typer

from captionkit.cli import app, main
from captionkit.cli_options import MODEL_OPTIONS
from captionkit.cli_train import NOT_OPTIONS
from captionkit.errors import CaptionkitError
from captionkit.training.config import GROUPS, RunConfig

from conftest import ATTENDING_RUNS, write_images


def run(capsys, argv):
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_make_shapes(tmp_path, capsys):
    code, out, _ = run(capsys, ["make-shapes", str(tmp_path / "s"), "--n-images", "5"])
    assert code == 0 and "wrote 5 images, 25 captions" in out
    assert (tmp_path / "s" / "captions.txt").is_file()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "--data", "{tmp}/missing", "--out", "{tmp}/run"], "no such file or folder"),
        (["train", "--data", "{tmp}/notes", "--out", "{tmp}/run"], "unknown dataset format"),
        (["train", "--data", "{tmp}/noimages", "--out", "{tmp}/run"], "no images found"),
        (
            ["evaluate", "--checkpoint", "{tmp}/nope", "--data", "{tmp}/notes"],
            "checkpoint folder not found",
        ),  # fmt: skip
        (["caption", "--checkpoint", "{tmp}/notes", "{tmp}/x.jpg"], "not a captionkit run folder"),
    ],
)
def test_user_errors_are_one_line(tmp_path, capsys, argv, message):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("hello")
    (tmp_path / "noimages").mkdir()
    (tmp_path / "noimages" / "captions.txt").write_text("image,caption\nx.jpg,a dog\n")
    code, _, err = run(capsys, [a.format(tmp=tmp_path) for a in argv])
    assert code == 1
    assert err.startswith("error: ") and message in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_unreadable_image_to_caption_is_one_line(tiny_attention_run, tmp_path, capsys):
    (tmp_path / "fake.jpg").write_text("not an image")
    write_images(tmp_path, ["ok.png"])
    run_dir = str(tiny_attention_run)
    code, _, err = run(capsys, ["caption", "--checkpoint", run_dir, str(tmp_path / "fake.jpg")])
    assert code == 1 and "fake.jpg: cannot read image" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    code, _, err = run(capsys, ["caption", "--checkpoint", run_dir, str(tmp_path / "no.jpg")])
    assert code == 1 and "no.jpg: no such image file" in err
    code, out, _ = run(capsys, ["caption", "--checkpoint", run_dir, str(tmp_path / "ok.png")])
    assert code == 0 and out.startswith(f"{tmp_path / 'ok.png'}: ")


def test_usage_errors_and_help(capsys):
    code, _, err = run(capsys, ["train"])
    assert code == 2 and "Missing option" in err
    code, out, _ = run(capsys, ["--help"])
    assert code == 0 and "make-shapes" in out and "evaluate" in out


def test_help_lists_the_commands_without_importing_torch():
    # The train options come from the config dataclasses, which import torch: only `train`
    # makes them, so that `captionkit --help` stays fast.
    code = (
        "import sys; from captionkit.cli import main; main(['--help']); "
        "print(sorted(m for m in ('torch', 'captionkit.training.config') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "make-shapes" in done.stdout and done.stdout.strip().endswith("[]")


def test_train_help_shows_its_options_in_panels(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")  # no wrapped or cut option names
    code, out, _ = run(capsys, ["train", "--help"])
    assert code == 0
    # The run's own options (and RunConfig's, --model), then a panel per config group in
    # RunConfig's order with a row per field (test_config.py checks them field by field), then
    # the model's options.
    own = [f.name for f in dataclasses.fields(RunConfig) if f.name not in {*GROUPS, *NOT_OPTIONS}]
    groups = {"Options": 4 + len(own)}  # --out, --resume, --config, --preset
    for title, cls in zip(("Data", "Encoder", "Optimization", "Run", "SCST"), GROUPS.values()):
        groups[title] = len(dataclasses.fields(cls))
    groups["Model"] = len(MODEL_OPTIONS)
    # Each panel's text, from its title to the next: the panels come in this order.
    titles = [out.index(f"╭─ {title} ─") for title in groups]
    assert titles == sorted(titles)
    texts = [out[start:end] for start, end in zip(titles, [*titles[1:], len(out)])]
    for (title, count), text in zip(groups.items(), texts):
        rows = re.findall(r"^│\s+(--[a-z-]+)", text, re.MULTILINE)  # a row's (first) flag
        assert len(set(rows) - {"--help"}) == count, (title, rows)
    assert {"--out", "--resume", "--config", "--model"} < set(re.findall(r"--[a-z-]+", texts[0]))
    model_flags = {"--" + name.replace("_", "-") for name in MODEL_OPTIONS}
    assert model_flags == set(re.findall(r"^│\s+(--[a-z-]+)", texts[-1], re.MULTILINE))
    assert re.search(r"--strict +--no-strict", texts[1])  # true/false fields go both ways


def test_train_options_reach_the_config(tmp_path, capsys, monkeypatch):
    import captionkit.training.train as training

    seen = {}

    def fake_train(config, run_dir, resume=False):
        seen["config"], seen["run_dir"] = config, run_dir
        return {"val/CIDEr": 0.5, "epoch": 1}

    monkeypatch.setattr(training, "train", fake_train)
    argv = ["train", "--data", "d", "--out", str(tmp_path / "r"), "--tokenizer", "bpe",
            "--vocab-size", "500", "--max-length", "30", "--strict", "--epochs", "3",
            "--batch-size", "8", "--lr", "0.01", "--min-count", "2", "--seed", "7",
            "--model", "show_tell", "--encoder-weights", "none"]  # fmt: skip
    code, out, _ = run(capsys, argv)
    assert code == 0 and "best val CIDEr (epoch 1): 0.500; saved to" in out
    c = seen["config"]
    assert (c.data.tokenizer, c.data.vocab_size, c.data.max_length, c.data.strict) == (
        "bpe",
        500,
        30,
        True,
    )
    assert (c.train.epochs, c.train.batch_size, c.optim.lr, c.data.min_count, c.train.seed) == (
        3,
        8,
        0.01,
        2,
        7,
    )
    assert c.encoder.weights == "none"
    code, _, err = run(capsys, ["train", "--data", "d", "--out", "r", "--tokenizer", "chars"])
    assert code == 1 and err == "error: unknown tokenizer 'chars' (word or bpe)\n"


def test_train_says_which_epochs_the_kept_mean_is_of(tmp_path, capsys, monkeypatch):
    import captionkit.training.train as training

    row = {"val/CIDEr": 0.5, "epoch": 29, "averaged_epochs": 5}  # `--average-last 5`'s last row
    monkeypatch.setattr(training, "train", lambda config, run_dir, resume=False: row)
    code, out, _ = run(capsys, ["train", "--data", "d", "--out", str(tmp_path / "r")])
    assert code == 0 and "val CIDEr (the mean of epochs 25-29): 0.500; saved to" in out


# --- what a user sees first ---------------------------------------------------------------------


def _help_blocks(out: str) -> list[list[str]]:
    """The text of a --help above its first panel: paragraphs of stripped lines."""
    lines = [line.strip() for line in out[: out.index("╭")].splitlines()]
    return [b.split("\n") for b in "\n".join(lines).strip().split("\n\n")]


def test_help_lists_each_command_with_its_one_line_summary(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")  # a default terminal
    code, out, _ = run(capsys, ["--help"])
    assert code == 0
    commands = typer.main.get_command(app).commands
    rows = re.findall(r"^│ (\S*) +(.+?) *│$", out[out.index("╭─ Commands") :], re.MULTILINE)
    assert [name for name, _ in rows] == list(commands)  # no row carries on a summary
    for name, summary in rows:  # each command's first docstring paragraph, whole
        assert summary == commands[name].help.split("\n\n")[0], name


def test_command_help_is_its_summary_then_prose_wrapped_to_the_terminal(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "150")  # wider than a docstring's lines
    for name, command in typer.main.get_command(app).commands.items():
        code, out, _ = run(capsys, [name, "--help"])
        assert code == 0
        usage, summary, *rest = _help_blocks(out)
        paragraphs = command.help.split("\n\n")
        assert summary == [paragraphs[0]], name
        assert [" ".join(block) for block in rest] == paragraphs[1:], name
        for block in rest:  # filled to the terminal's width, not broken where the source was
            assert all(len(line) > 120 for line in block[:-1]), (name, block)


def test_train_help_gives_the_preset_defaults(capsys, monkeypatch):
    from captionkit.training import TrainConfig
    from captionkit.training.presets import DEFAULT_PRESET, PRESETS, SCALE_FROM_IMAGES

    monkeypatch.setenv("COLUMNS", "200")
    code, out, _ = run(capsys, ["train", "--help"])
    assert code == 0
    rows = re.split(r"^│ (?=--)", out, flags=re.MULTILINE)  # an option's text, to the next
    text = {row.split()[0]: " ".join(row.split()) for row in rows[1:]}
    best = PRESETS[DEFAULT_PRESET]
    assert f"[default: (from --preset, {best['model']} for {DEFAULT_PRESET})]" in text["--model"]
    # Set by the preset and scaled with the training set; set only when scaled.
    scaled = f"for {DEFAULT_PRESET}, scaled above {SCALE_FROM_IMAGES:,} training images)]"
    epochs, scst_epochs = best["train"]["epochs"], TrainConfig().scst_epochs
    assert f"[default: (from --preset, {epochs} {scaled}" in text["--epochs"]
    assert f"[default: (from --preset, {scst_epochs} {scaled}" in text["--scst-epochs"]
    assert f"[default: ({DEFAULT_PRESET})]" in text["--preset"]
    assert "[default: show_tell]" not in out  # RunConfig's own default, not what runs


def test_commands_get_the_defaults_of_the_owning_dataclasses(tmp_path, capsys, monkeypatch):
    """With no option given, each command gets the owners' defaults: an option that restated one
    (as --rerank-candidates restated RerankOptions' 5 after it became 8) would differ."""
    import captionkit.data
    import captionkit.data.dataset_report as dataset_report
    import captionkit.encoders.factory as factory
    from captionkit.decoding import DecodingOptions
    from captionkit.reranking import RerankOptions
    from captionkit.training import DataConfig, EncoderConfig

    base, seen = _decoding_seen(monkeypatch, tmp_path)
    assert run(capsys, base)[0] == 0
    assert seen["rerank"] == RerankOptions() and seen["options"] == DecodingOptions()
    reports = []
    monkeypatch.setattr(dataset_report, "prepare_report", lambda *args, **kw: reports.append(args))
    monkeypatch.setattr(dataset_report, "format_report", lambda report: "")
    assert run(capsys, ["prepare", str(tmp_path)])[0] == 0
    (args,) = reports
    assert args[2:4] == (DataConfig().min_count, DataConfig().max_length)

    def create_encoder(*args):
        raise CaptionkitError(f"encoder {args}")

    monkeypatch.setattr(captionkit.data, "load_dataset", lambda data, images: None)
    monkeypatch.setattr(factory, "create_encoder", create_encoder)
    code, _, err = run(capsys, ["extract", "--data", str(tmp_path)])
    e = EncoderConfig()
    assert code == 1 and err == f"error: encoder {(e.name, e.weights, e.resize)}\n"


def test_train_shows_no_library_advertisement_or_deprecation(tmp_path, capfd, caplog):
    from captionkit.data.shapes import make_shapes

    make_shapes(tmp_path / "shapes", n_images=12, seed=0)
    argv = ["train", "--data", str(tmp_path / "shapes"), "--out", str(tmp_path / "run"),
            "--preset", "none", "--epochs", "1", "--min-count", "1", "--hidden-dim", "8",
            "--embed-dim", "8"]  # fmt: skip
    caplog.set_level(logging.INFO)  # Lightning's messages, wherever its handlers send them
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")  # each warning once, deprecations too
        assert main(argv) == 0
    captured = capfd.readouterr()
    messages = [str(w.message) for w in caught]
    shown = "\n".join([captured.out, captured.err, caplog.text, *messages])
    assert "best val CIDEr" in shown  # what the user is told
    assert "litlogger" not in shown.lower() and "Tip:" not in shown
    assert "deprecat" not in shown.lower(), shown


# --- decoding options (evaluate, caption) ------------------------------------------------------


def _decoding_seen(monkeypatch, tmp_path):
    """Stub `evaluate_run` to record the DecodingOptions the CLI builds."""
    import captionkit.evaluation.evaluate as evaluation

    seen = {}

    def fake_evaluate_run(
        run_dir,
        data,
        images,
        split,
        cache_dir=None,
        options=None,
        spice=False,
        rerank=None,
        quantize="none",
    ):
        seen["options"], seen["spice"], seen["quantize"] = options, spice, quantize
        seen["rerank"] = rerank
        stats = {"length_mean": 2.0, "vocabulary": 2.0}
        return evaluation.Evaluation({"CIDEr": 0.5}, {"a.jpg": "a dog"}, {}, stats=stats)

    monkeypatch.setattr(evaluation, "evaluate_run", fake_evaluate_run)
    return ["evaluate", "--checkpoint", str(tmp_path), "--data", str(tmp_path)], seen


def test_decoding_options_reach_evaluate(tmp_path, capsys, monkeypatch):
    from captionkit.decoding import DecodingOptions

    base, seen = _decoding_seen(monkeypatch, tmp_path)
    code, out, _ = run(capsys, base)
    assert code == 0 and seen["options"] == DecodingOptions(beam_size=3)
    assert "1 images, beam 3" in out and seen["quantize"] == "none"
    code, out, _ = run(capsys, [*base, "--quantize", "int8"])
    assert code == 0 and seen["quantize"] == "int8" and "quantized int8" in out
    argv = [*base, "--beam-size", "5", "--length-penalty", "0.6", "--no-repeat-ngram", "2",
            "--allow-unk", "--bad-endings"]  # fmt: skip
    code, out, _ = run(capsys, argv)
    assert code == 0 and seen["options"] == DecodingOptions(
        beam_size=5, length_penalty=0.6, no_repeat_ngram_size=2, allow_unk=True, bad_endings=True
    )
    assert "beam 5 (length penalty 0.6, no repeated 2-grams, no bad endings, <unk> allowed)" in out
    code, _, _ = run(capsys, [*base, "--forbid-unk"])  # the default now: accepted, changes nothing
    assert code == 0 and seen["options"] == DecodingOptions()
    code, out, _ = run(capsys, [*base, "--beam-size", "4", "--beam-groups", "2"])
    assert code == 0 and seen["options"] == DecodingOptions(beam_size=4, beam_groups=2)
    assert "beam 4 (2 groups, diversity 0.5)" in out
    code, _, _ = run(capsys, [*base, "--beam-size", "4", "--beam-groups", "2", "--diversity", "1"])
    assert code == 0 and seen["options"].diversity == 1.0
    code, _, _ = run(capsys, [*base, "--length-penalty", "Average"])
    assert code == 0 and seen["options"].length_penalty == "average"
    code, _, _ = run(capsys, [*base, "--length-penalty", "none", "--beam-size", "1"])
    assert code == 0 and seen["options"] == DecodingOptions(beam_size=1)
    argv = [*base, "--sample", "--num-samples", "4", "--temperature", "0.7", "--top-k", "10",
            "--top-p", "0.9", "--seed", "3"]  # fmt: skip
    code, out, _ = run(capsys, argv)
    assert code == 0 and seen["options"] == DecodingOptions(
        sample=True, num_samples=4, temperature=0.7, top_k=10, top_p=0.9, seed=3
    )
    assert "sampling (4 per image, T=0.7, top-k 10, top-p 0.9, seed 3)" in out


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--top-p", "1.5", "--sample"], "top_p must be in (0, 1], not 1.5"),
        (["--top-p", "0", "--sample"], "top_p must be in (0, 1], not 0.0"),
        (["--temperature", "0", "--sample"], "temperature must be above 0"),
        (["--beam-size", "0"], "beam_size must be at least 1, not 0"),
        (["--no-repeat-ngram", "-1"], "no_repeat_ngram_size must be 0 (off) or more"),
        (["--length-penalty", "long"], "--length-penalty must be none, average or a number"),
        (["--length-penalty", "inf"], "length_penalty must be None, 'average' or a number"),
        (["--length-penalty", "0.6", "--beam-size", "1"], "length_penalty ranks beams"),
        (["--top-k", "5"], "top_k: sampling options, used only with sample"),
        (["--seed", "1", "--temperature", "2"], "temperature, seed: sampling options"),
        (["--sample", "--beam-size", "2"], "beam_size: beam search options, not used with"),
        (["--sample", "--length-penalty", "average"], "length_penalty: beam search options"),
        (["--beam-groups", "2"], "beam_groups 2 must divide beam_size 3"),
        (["--diversity", "0.3"], "diversity penalises beam groups: it needs beam_groups 2"),
        (["--forbid-unk", "--allow-unk"], "--forbid-unk and --allow-unk contradict each other"),
        (["--ensemble-mean", "max"], "ensemble_mean must be 'probability' or 'log_probability'"),
    ],
)
def test_bad_decoding_options_are_one_line(tmp_path, capsys, monkeypatch, extra, message):
    base, seen = _decoding_seen(monkeypatch, tmp_path)
    code, _, err = run(capsys, [*base, *extra])
    assert code == 1 and err.startswith("error: ") and message in err, err
    assert len(err.strip().splitlines()) == 1 and "options" not in seen


@pytest.mark.parametrize("name", sorted(ATTENDING_RUNS))
def test_caption_attention_map_of_every_attending_model(request, name, tmp_path, capsys):
    from PIL import Image

    run_dir = request.getfixturevalue(ATTENDING_RUNS[name])
    write_images(tmp_path, ["a.png"], size=64)
    out = tmp_path / "att.png"
    argv = ["caption", "--checkpoint", str(run_dir), "--beam-size", "1",
            "--attention-map", str(out), str(tmp_path / "a.png")]  # fmt: skip
    code, stdout, _ = run(capsys, argv)
    assert code == 0
    tokens = stdout.split(": ", 1)[1].split(" -> ")[0].split()
    assert tokens and stdout.strip().endswith(f"-> {out}")
    tiles = 1 + len(tokens)  # the image, then one map per token, 6 to a row of 166 px
    rows, cols = (tiles + 5) // 6, min(tiles, 6)
    assert Image.open(out).size == (cols * 166 + 6, rows * (166 + 26) + 6)


def test_caption_n_best_options(tiny_attention_run, tmp_path, capsys):
    write_images(tmp_path, ["x.png"])
    image = str(tmp_path / "x.png")
    base = ["caption", "--checkpoint", str(tiny_attention_run), image]
    code, out, _ = run(capsys, [*base, "--json"])
    assert code == 0
    best = json.loads(out)
    code, out, _ = run(capsys, [*base, "--n-best", "2"])
    assert code == 0
    lines = out.splitlines()
    assert len(lines) == 3 and lines[0] == f"{image}:"
    ranked = [re.fullmatch(r"  (\d)\. (.+)  \((-?\d+\.\d\d)\)", line) for line in lines[1:]]
    assert all(ranked) and [m[1] for m in ranked] == ["1", "2"]
    assert ranked[0][2] == best["caption"] and ranked[1][2] != best["caption"]
    assert float(ranked[0][3]) == pytest.approx(best["score"], abs=0.005)
    assert float(ranked[0][3]) >= float(ranked[1][3])  # best first
    code, out, err = run(capsys, [*base, "--n-best", "4"])
    assert code == 1 and "n_best 4 is more than beam_size 3" in err
    code, out, err = run(capsys, [*base, "--sample", "--n-best", "2"])
    assert code == 1 and "n_best: beam search options, not used with sample" in err
    sampled = [*base, "--sample", "--num-samples", "2", "--seed", "1", "--json"]
    code, out, _ = run(capsys, sampled)
    assert code == 0
    drawn = json.loads(out)
    assert drawn["image"] == image and len(drawn["captions"]) == 2
    assert drawn["captions"][0] == {"caption": drawn["caption"], "score": drawn["score"]}
    assert run(capsys, sampled)[1] == out  # seeded
    code, _, err = run(capsys, ["evaluate", "--checkpoint", "r", "--data", "d", "--n-best", "2"])
    assert code == 2 and "No such option: --n-best" in err  # caption only


# --- model options (train) ---------------------------------------------------------------------


def _train_seen(monkeypatch, tmp_path):
    import captionkit.training.train as training

    seen = {}
    monkeypatch.setattr(training, "train", lambda config, run_dir, resume=False:
                        seen.update(config=config) or {"val/CIDEr": 0.5, "epoch": 1})  # fmt: skip
    # --preset none: the config defaults (Show-and-Tell), which these model options start from.
    return ["train", "--data", "d", "--out", str(tmp_path / "r"), "--preset", "none"], seen


@pytest.mark.parametrize(
    ("extra", "model_args"),
    [
        ([], {}),
        (["--rnn", "gru", "--hidden-dim", "64", "--embed-dim", "32", "--layers", "2",
          "--dropout", "0.1", "--model-arg", "image_input=init_state"],
         {"rnn": "gru", "hidden_dim": 64, "embed_dim": 32, "num_layers": 2, "dropout": 0.1,
          "image_input": "init_state"}),
        (["--model", "transformer", "--hidden-dim", "64", "--layers", "2", "--model-arg",
          "n_heads=4", "--model-arg", "tie_weights=false", "--model-arg", "dropout=0.2"],
         {"d_model": 64, "n_layers": 2, "n_heads": 4, "tie_weights": False, "dropout": 0.2}),
        (["--model", "attention", "--hidden-dim", "64", "--model-arg", "alpha_c=0"],
         {"hidden_dim": 64, "alpha_c": 0.0}),
    ],
)  # fmt: skip
def test_model_options_reach_the_config(tmp_path, capsys, monkeypatch, extra, model_args):
    base, seen = _train_seen(monkeypatch, tmp_path)
    code, _, err = run(capsys, [*base, *extra])
    assert code == 0, err
    assert seen["config"].model_args == model_args
    assert all(type(v) is type(model_args[k]) for k, v in seen["config"].model_args.items())


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--model", "attention", "--rnn", "gru"],
         "--rnn: model 'attention' has no such setting (its settings: embed_dim, hidden_dim,"),
        (["--model", "transformer", "--embed-dim", "8"], "--embed-dim: model 'transformer' has no"),
        (["--model-arg", "width=3"],
         "model 'show_tell' has no setting 'width' (valid: embed_dim, hidden_dim, num_layers, "
         "dropout, rnn, image_input)"),
        (["--model-arg", "vocab_size=3"], "has no setting 'vocab_size'"),
        (["--model-arg", "hidden_dim"], "--model-arg must be KEY=VALUE, not 'hidden_dim'"),
        (["--model-arg", "hidden_dim=wide"], "--model-arg hidden_dim=wide: expected an integer"),
        (["--model-arg", "dropout=x"], "dropout=x: expected a number"),
        (["--model", "transformer", "--model-arg", "tie_weights=maybe"],
         "tie_weights=maybe: expected true or false"),
        (["--hidden-dim", "8", "--model-arg", "hidden_dim=16"], "hidden_dim is already set to 8"),
        (["--rnn", "rnn"], "model 'show_tell': rnn must be 'lstm' or 'gru', not 'rnn'"),
        (["--model-arg", "image_input=last"], "image_input must be 'first_word' or 'init_state'"),
        (["--model", "transformer", "--hidden-dim", "30"], "n_heads=8 must divide d_model=30"),
        (["--model", "lstm"], "--model must be one of show_tell, attention, transformer"),
    ],
)  # fmt: skip
def test_bad_model_options_are_one_line(tmp_path, capsys, monkeypatch, extra, message):
    base, seen = _train_seen(monkeypatch, tmp_path)
    code, _, err = run(capsys, [*base, *extra])
    assert code == 1 and err.startswith("error: ") and message in err, err
    assert len(err.strip().splitlines()) == 1 and "config" not in seen
