"""Encoder fine-tuning: which weights train, what the run folder keeps, who uses it, --init."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from captionkit.cli import main
from captionkit.data.image_files import load_image
from captionkit.data.ptb_tokenizer import detokenize
from captionkit.data.shapes import make_shapes
from captionkit.data.vocab import Vocabulary
from captionkit.decoding import DecodingOptions, decode
from captionkit.encoders import create_encoder
from captionkit.encoders.finetune import encoder_blocks, unfreeze_last_blocks
from captionkit.errors import CaptionkitError
from captionkit.evaluation import evaluate as evaluate_module
from captionkit.evaluation.evaluate import evaluate_run
from captionkit.models import MODELS, create_model
from captionkit.models.run_folder import encoder_for, load_checkpoint
from captionkit.reranking import RerankOptions
from captionkit.serving import Captioner
from captionkit.training import DataConfig, RunConfig
from captionkit.training.config import OptimConfig
from captionkit.training.image_batches import CaptionedImages, collate_images
from captionkit.training.module import CaptioningModule
from captionkit.training.train import train

from conftest import TINY as SETTINGS
from conftest import write_images

TINY = {"hidden_dim": 16, "embed_dim": 16}


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ft-shapes")
    make_shapes(folder, n_images=20, seed=3)
    return folder


def _config(shapes, **train) -> RunConfig:
    config = RunConfig(model_args=dict(TINY), data=DataConfig(str(shapes), min_count=1))
    config.train.epochs, config.train.batch_size = 1, 16
    for key, value in train.items():
        setattr(config.train, key, value)
    return config


@pytest.fixture(scope="module")
def base_run(shapes, tmp_path_factory):
    """A decoder trained on cached features: the usual start of a fine-tuning."""
    run = tmp_path_factory.mktemp("runs") / "base"
    train(_config(shapes), run)
    return run


@pytest.fixture(scope="module")
def finetuned_run(shapes, base_run):
    """The last block of Lite0 fine-tuned from `base_run`, images decoded in a worker process,
    captions weighted by their consensus (the weights travel with the image batches)."""
    run = base_run.parent / "finetuned"
    config = _config(shapes, init=str(base_run), workers=1)
    config.encoder.finetune, config.encoder.finetune_blocks = True, 1
    config.optim.caption_weights = "consensus"
    train(config, run)
    return run


@pytest.mark.slow
def test_only_the_last_block_trains_and_frozen_batchnorm_stats_stay(finetuned_run):
    base = create_encoder().model.state_dict()
    tuned = load_file(finetuned_run / "encoder.safetensors")
    assert set(tuned) == set(base)
    blocks, head = encoder_blocks(create_encoder().model)
    assert len(blocks) == 7 and head == []
    trained_params = set(blocks[-1])  # blocks.6 with conv_head and bn2 after it
    assert {"blocks.6.0.conv_pw.weight", "conv_head.weight", "bn2.weight"} <= trained_params
    trained_modules = {name.rsplit(".", 1)[0] for name in trained_params}
    for key in base:
        if key in trained_params:
            assert not torch.equal(tuned[key], base[key]), key
        elif key.rsplit(".", 1)[0] not in trained_modules:  # weights and BN buffers alike
            assert torch.equal(tuned[key], base[key]), key
    assert not torch.equal(tuned["bn2.running_mean"], base["bn2.running_mean"])  # BN trained


@pytest.mark.slow
def test_the_run_records_and_reloads_its_finetuned_encoder(finetuned_run, base_run):
    spec = json.loads((finetuned_run / "config.json").read_text())["encoder"]
    base_spec = json.loads((base_run / "config.json").read_text())["encoder"]
    assert spec["finetuned"] is True and spec["base_fingerprint"] == base_spec["fingerprint"]
    assert spec["fingerprint"] != base_spec["fingerprint"]
    encoder = encoder_for(load_checkpoint(finetuned_run))
    assert encoder.fingerprint() == spec["fingerprint"]
    saved = load_file(finetuned_run / "encoder.safetensors")
    assert all(torch.equal(v, saved[k]) for k, v in encoder.model.state_dict().items())
    # Re-ranking's neighbour index holds the features of that (exported) encoder.
    from captionkit.reranking import NeighbourIndex

    assert NeighbourIndex.load(finetuned_run).encoder == spec["fingerprint"]

    (finetuned_run / "encoder.safetensors").rename(finetuned_run / "moved")
    try:
        with pytest.raises(CaptionkitError, match="encoder.safetensors: encoder weights file"):
            encoder_for(load_checkpoint(finetuned_run))
    finally:
        (finetuned_run / "moved").rename(finetuned_run / "encoder.safetensors")


@pytest.mark.slow
def test_captioner_and_evaluate_use_the_finetuned_encoder(finetuned_run, shapes, monkeypatch):
    images = sorted((shapes / "Images").iterdir())[:2]
    trained = load_checkpoint(finetuned_run)
    by_hand = create_encoder()  # the base encoder with the saved weights put in by hand
    by_hand.model.load_state_dict(load_file(finetuned_run / "encoder.safetensors"))
    pixels = torch.stack([by_hand.transform()(load_image(p)) for p in images])
    with torch.no_grad():
        pooled, grid = by_hand(pixels)
        base_pooled, _ = create_encoder()(pixels)
    assert not torch.allclose(pooled, base_pooled, atol=1e-3)
    results = decode(trained.model, pooled, grid, DecodingOptions(beam_size=2))
    expected = [detokenize(trained.vocab.decode(hyps[0].tokens)) for hyps in results]
    got = Captioner.load(finetuned_run).caption(images, DecodingOptions(beam_size=2),
                                                rerank=RerankOptions("none"))  # fmt: skip
    assert [hyps[0].text for hyps in got] == expected

    seen = []  # the feature rows that evaluation decodes
    real_caption_rows = evaluate_module.caption_rows

    def spy(trained, store, rows, *args, **kwargs):
        seen.append(np.asarray(store.pooled[rows], dtype=np.float32))
        return real_caption_rows(trained, store, rows, *args, **kwargs)

    monkeypatch.setattr(evaluate_module, "caption_rows", spy)
    result = evaluate_run(finetuned_run, shapes, split="test", meteor=False,
                          options=DecodingOptions(beam_size=1))  # fmt: skip
    test_images = [shapes / "Images" / name for name in result.predictions]
    with torch.no_grad():
        tuned, _ = by_hand(torch.stack([by_hand.transform()(load_image(p)) for p in test_images]))
    np.testing.assert_allclose(seen[0], tuned.numpy(), atol=2e-2)  # float16 in the store


@pytest.mark.slow
def test_init_starts_from_the_runs_weights_and_refuses_another_model(shapes, base_run, tmp_path):
    config = _config(shapes, init=str(base_run))
    config.optim.lr = 0.0  # Adam moves nothing: the saved weights must be the init run's
    train(config, tmp_path / "again")
    before, after = load_checkpoint(base_run), load_checkpoint(tmp_path / "again")
    assert after.vocab.to_dict() == before.vocab.to_dict()
    params = dict(before.model.named_parameters())
    assert all(torch.equal(p, params[k]) for k, p in after.model.named_parameters())

    bigger = _config(shapes, init=str(base_run))
    bigger.model_args["hidden_dim"] = 32
    with pytest.raises(CaptionkitError, match=r"other model settings \(hidden_dim 16 there, 32 he"):
        train(bigger, tmp_path / "bigger")
    other = _config(shapes, init=str(base_run))
    other.model, other.model_args = "transformer", {}
    with pytest.raises(CaptionkitError, match="its model is show_tell, not transformer"):
        train(other, tmp_path / "other")
    squash = _config(shapes, init=str(base_run))
    squash.encoder.resize = "squash"
    with pytest.raises(CaptionkitError, match="resized by crop, not squash"):
        train(squash, tmp_path / "squash")


def test_too_many_blocks_is_one_clear_error(shapes, tmp_path, capsys):
    argv = ["train", "--data", str(shapes), "--out", str(tmp_path / "run"),
            "--finetune-encoder", "--finetune-blocks", "8"]  # fmt: skip
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert err == ("error: --finetune-blocks 8: encoder tf_efficientnet_lite0 has 7 blocks "
                   "(choose 1 to 7)")  # fmt: skip
    with pytest.raises(CaptionkitError, match="has 4 blocks"):
        unfreeze_last_blocks(create_encoder("resnet18", weights="none"), 0)


FAMILIES = [("resnet18", 4, "layer4."), ("vit_small_patch16_224", 12, "blocks.11.")]


@pytest.mark.parametrize("name, n_blocks, last", FAMILIES)
def test_blocks_of_other_families_and_eval_mode_of_frozen_parts(name, n_blocks, last, recwarn):
    encoder = create_encoder(name, weights="none")
    trainable = unfreeze_last_blocks(encoder, 1)
    names = {n for n, p in encoder.model.named_parameters() if p.requires_grad}
    assert len(encoder_blocks(encoder.model)[0]) == n_blocks and len(trainable) == len(names)
    assert all(n.startswith(last) or n.startswith("norm.") for n in names)
    assert any(n.startswith("norm.") for n in names) == name.startswith("vit")  # ViT's final norm
    assert not any(m.training for m in encoder.model.modules())  # eval until training starts
    encoder.train()
    for module_name, module in encoder.model.named_modules():
        if isinstance(module, (torch.nn.BatchNorm2d, torch.nn.Dropout, torch.nn.LayerNorm)):
            assert module.training == module_name.startswith((last, "norm")), module_name


def test_image_batches_repeat_each_image_for_its_captions(tmp_path, capsys):
    write_images(tmp_path, ["a.png", "b.png"])
    paths = [tmp_path / "a.png", tmp_path / "missing.png", tmp_path / "b.png"]
    tokens = [[[1, 5, 2], [1, 6, 7, 2]], [[1, 8, 2]], [[1, 9, 9, 9, 2]]]
    data = CaptionedImages(paths, lambda image: torch.full((3, 4, 4), image.width), tokens)
    batch = collate_images([data[i] for i in range(3)])  # the missing image and its caption go
    assert batch["images"].shape == (2, 3, 4, 4) and batch["images"].max() == 48
    assert batch["tokens"].tolist() == [[1, 5, 2, 0, 0], [1, 6, 7, 2, 0], [1, 9, 9, 9, 2]]
    assert batch["image_index"].tolist() == [0, 0, 1]
    assert "missing.png: image file not found; skipped" in capsys.readouterr().err
    val = CaptionedImages(paths[:1], lambda image: torch.zeros(3, 4, 4), keys=["a.png"])
    assert collate_images([val[0]])["keys"] == ["a.png"]


@pytest.mark.parametrize("name", sorted(MODELS))
def test_a_finetuning_step_of_every_model_reaches_the_unfrozen_block(name, monkeypatch):
    """The fast check, per model, of the fine-tuning path the slow tests run for Show-and-Tell:
    images through Lite0 with its last block unfrozen, captions indexing their image."""
    encoder = create_encoder()  # not the shared fixture: this test unfreezes a block
    trainable = unfreeze_last_blocks(encoder, 1)
    model = create_model(name, vocab_size=9, feature_dim=encoder.feature_dim, **SETTINGS[name])
    module = CaptioningModule(model, Vocabulary(["red", "circle", "blue", "square", "big"]),
                              OptimConfig(), {}, DecodingOptions(beam_size=1),
                              encoder=encoder)  # fmt: skip
    monkeypatch.setattr(module, "log", lambda *args, **kwargs: None)
    # No Trainer, one process: the DDP rescaling of the token mean does not apply.
    monkeypatch.setattr(module, "_global_token_mean", lambda loss, *_: loss)
    torch.manual_seed(0)
    batch = {"images": torch.randn(2, 3, 96, 96), "image_index": torch.tensor([0, 0, 1]),
             "tokens": torch.tensor([[1, 4, 5, 2], [1, 6, 2, 0], [1, 7, 8, 2]])}  # fmt: skip
    module.on_train_start()
    module.training_step(batch, 0).backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in trainable)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    frozen = [p for p in encoder.parameters() if not p.requires_grad]
    assert frozen and all(p.grad is None for p in frozen)
