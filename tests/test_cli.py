"""The CLI: subcommands run through main(argv), and user errors are one line, not a traceback."""

import pytest

from captionkit.cli import main

from conftest import write_images


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


def test_unreadable_image_to_caption_is_one_line(tmp_path, capsys, monkeypatch):
    from captionkit.serving import captioner

    class Stub:
        def caption(self, images, beam_size):
            captioner.Captioner._pixels(self, images[0])

        transform = None

    monkeypatch.setattr(captioner.Captioner, "load", classmethod(lambda cls, path: Stub()))
    (tmp_path / "fake.jpg").write_text("not an image")
    write_images(tmp_path, ["ok.png"])
    code, _, err = run(
        capsys, ["caption", "--checkpoint", str(tmp_path), str(tmp_path / "fake.jpg")]
    )
    assert code == 1 and "fake.jpg: cannot read image" in err
    code, _, err = run(capsys, ["caption", "--checkpoint", str(tmp_path), str(tmp_path / "no.jpg")])
    assert code == 1 and "no.jpg: no such image file" in err


def test_usage_errors_and_help(capsys):
    code, _, err = run(capsys, ["train"])
    assert code == 2 and "Missing option" in err
    code, out, _ = run(capsys, ["--help"])
    assert code == 0 and "make-shapes" in out and "evaluate" in out


def test_train_options_reach_the_config(tmp_path, capsys, monkeypatch):
    import captionkit.training.train as training

    seen = {}

    def fake_train(config, run_dir):
        seen["config"], seen["run_dir"] = config, run_dir
        return {"val/CIDEr": 0.5, "epoch": 1}

    monkeypatch.setattr(training, "train", fake_train)
    argv = ["train", "--data", "d", "--out", str(tmp_path / "r"), "--tokenizer", "bpe",
            "--vocab-size", "500", "--max-length", "30", "--strict", "--epochs", "3",
            "--batch-size", "8", "--lr", "0.01", "--min-count", "2", "--seed", "7",
            "--model", "show_tell", "--encoder-weights", "none"]  # fmt: skip
    code, out, _ = run(capsys, argv)
    assert code == 0 and "best val CIDEr 0.500" in out
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
    assert code == 1 and "--tokenizer must be one of word, bpe" in err
