"""A dataset full of bad files still trains, evaluates and validates, listing what it skipped."""

import io
import json

import numpy as np
import pytest
from PIL import Image

from captionkit.cli import main
from captionkit.data import image_files as images_module
from captionkit.data.formats import load_dataset
from captionkit.decoding import DecodingOptions
from captionkit.errors import CaptionkitError
from captionkit.evaluation.evaluate import evaluate_run
from captionkit.training import DataConfig, RunConfig
from captionkit.training.train import train

GOOD = [f"good{i}.png" for i in range(12)]


@pytest.fixture
def messy_dataset(tmp_path, monkeypatch):
    """12 good images and one of each bad kind, captions with every caption-level problem."""
    folder = tmp_path / "messy"
    (folder / "Images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in GOOD:
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(
            folder / "Images" / name
        )
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), "red").save(buf, format="JPEG")
    (folder / "Images" / "truncated.jpg").write_bytes(buf.getvalue()[:300])
    (folder / "Images" / "empty.jpg").write_bytes(b"")
    (folder / "Images" / "text.jpg").write_text("not an image")
    Image.new("RGB", (300, 300), "blue").save(folder / "Images" / "huge.png")
    monkeypatch.setattr(images_module, "MAX_PIXELS", 200 * 200)  # huge.png is over the limit
    bad_images = ["truncated.jpg", "empty.jpg", "text.jpg", "huge.png", "missing.jpg"]
    lines = [b"image,caption"]
    for i, name in enumerate(GOOD + bad_images):
        lines += [f"{name},a picture number {i % 3} of things".encode()] * 2  # one duplicate
        lines.append(f"{name},another caption {i % 4}".encode())
    lines += [b"good0.png,   ", b"good1.png,caf\xe9 latin-1 line", b"nocaption.png,"]
    (folder / "captions.txt").write_bytes(b"\n".join(lines) + b"\n")
    return folder


def test_prepare_reports_every_problem_by_kind(messy_dataset, tmp_path, capsys):
    out = tmp_path / "report.json"
    assert main(["prepare", str(messy_dataset), "--output", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["images"] == 12 and report["captions"] == 24
    assert sum(report["splits"].values()) == 12
    assert report["problems"] == {
        "bad_encoding": 1, "duplicate_caption": 17, "empty_caption": 2,
        "image_without_caption": 1, "missing_image": 1, "too_large_image": 1,
        "unreadable_image": 3,
    }  # fmt: skip
    printed = capsys.readouterr()
    assert "unreadable_image" in printed.out and "truncated.jpg" in printed.err


def test_strict_mode_stops_at_the_first_problem(messy_dataset, capsys):
    assert main(["prepare", str(messy_dataset), "--strict"]) == 1
    assert "(--strict)" in capsys.readouterr().err
    with pytest.raises(CaptionkitError, match="duplicate|empty|UTF-8"):
        from captionkit.data.problems import Problems

        load_dataset(messy_dataset, problems=Problems(strict=True))


def test_training_and_evaluation_complete_and_list_the_skipped_files(messy_dataset, tmp_path):
    config = RunConfig(model_args={"hidden_dim": 16, "embed_dim": 16},
                       data=DataConfig(str(messy_dataset), min_count=1))  # fmt: skip
    config.train.epochs, config.train.batch_size = 1, 8
    run = tmp_path / "run"
    best = train(config, run)
    assert "val/CIDEr" in best and (run / "model.safetensors").is_file()
    problems = json.loads((run / "problems.json").read_text())
    skipped = {p["where"].rsplit("/", 1)[-1] for p in problems["problems"]
               if p["kind"].endswith("image")}  # fmt: skip
    assert skipped == {"truncated.jpg", "empty.jpg", "text.jpg", "huge.png", "missing.jpg"}
    splits = json.loads((run / "splits.json").read_text())
    result = evaluate_run(run, messy_dataset, split="test", meteor=False,
                          options=DecodingOptions(beam_size=2))  # fmt: skip
    assert set(result.predictions) == {k for k, v in splits.items() if v == "test"} - {
        "truncated.jpg",
        "empty.jpg",
        "text.jpg",
        "huge.png",
        "missing.jpg",
    }
