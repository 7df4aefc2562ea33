"""Every registered model goes through the whole pipeline: train, checkpoint, evaluate, caption.
(Show-and-Tell's variants, GRU and `image_input="init_state"`, are covered by the cheaper
parametrised tests of test_models.py: step-by-step decoding, overfitting, checkpoints.)"""

import json

import pytest

from captionkit.cli import main
from captionkit.data.shapes import make_shapes
from captionkit.models import MODELS
from captionkit.training import DataConfig, RunConfig
from captionkit.training.train import train

from conftest import TINY


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-shapes")
    make_shapes(folder, n_images=20, seed=3)
    return folder


def test_every_registered_model_has_tiny_settings():
    assert set(TINY) == set(MODELS)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(MODELS))
def test_model_trains_evaluates_and_captions(name, shapes, tmp_path, capsys):
    config = RunConfig(model=name, model_args=TINY[name],
                       data=DataConfig(str(shapes), min_count=1))  # fmt: skip
    config.train.epochs, config.train.batch_size = 2, 16
    best = train(config, tmp_path / "run")
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["model"]["name"] == name and saved["metrics"]["epoch"] == best["epoch"]

    out = tmp_path / "m.json"
    argv = ["evaluate", "--checkpoint", str(tmp_path / "run"), "--data", str(shapes),
            "--beam-size", "2", "--output", str(out)]  # fmt: skip
    assert main(argv) == 0
    assert set(json.loads(out.read_text())) >= {"BLEU-4", "CIDEr"}
    image = next((shapes / "Images").iterdir())
    argv = ["caption", "--checkpoint", str(tmp_path / "run"), "--json", "--n-best", "2", str(image)]
    assert main(argv) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["image"] == str(image) and isinstance(line["caption"], str)
    assert len(line["captions"]) == 2 and line["captions"][0]["caption"] == line["caption"]
