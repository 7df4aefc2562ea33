"""Encoder weights, key mapping and the feature store."""

import json
import os
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from captionkit.encoders import create_encoder, extract_features
from captionkit.encoders.factory import (
    KNOWN_ENCODERS,
    efficientnet_pytorch_to_timm,
    load_state_dict,
    packaged_weights_path,
)
from captionkit.errors import CaptionkitError

from conftest import write_images


@pytest.mark.parametrize("name", ["tf_efficientnet_lite0", "tf_efficientnet_lite1",
                                  "tf_efficientnet_lite2"])  # fmt: skip
def test_packaged_weights_classify_chelsea_as_a_cat(name, lite0):
    skimage_data = pytest.importorskip("skimage.data")
    image = Image.fromarray(skimage_data.chelsea())
    encoder = lite0 if name == lite0.name else create_encoder(name)
    with torch.no_grad():
        logits = encoder.model(encoder.transform()(image)[None])
    top5 = logits.topk(5).indices[0].tolist()
    assert set(top5[:3]) <= set(range(281, 286)), top5  # ImageNet's cat classes
    assert any(281 <= c <= 285 for c in top5)


def _random_lite0(resize: str):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "random weights": these tests read the preprocessing
        return create_encoder("tf_efficientnet_lite0", weights="none", resize=resize)


def test_squash_sees_the_whole_photo_and_crop_its_centre():
    # A 2:1 photo, red on its left quarter, blue elsewhere: the centre crop never sees the red.
    pixels = np.zeros((200, 400, 3), dtype=np.uint8)
    pixels[:, :100, 0], pixels[:, 100:, 2] = 255, 255
    photo = Image.fromarray(pixels)
    for resize, red_left_edge in (("crop", False), ("squash", True)):
        x = _random_lite0(resize).transform()(photo)  # [3, 224, 224], normalised to [-1, 1]
        assert x.shape == (3, 224, 224)
        assert bool(x[0, 112, 0] > x[2, 112, 0]) is red_left_edge, resize
        assert bool(x[0, 112, -1] < x[2, 112, -1])  # the right edge is blue either way
    # An exported model preprocesses from the data config in its JSON manifest: squash too.
    from captionkit.serving.exported_captioner import _Preprocess

    squash = _random_lite0("squash")
    manifest_config = json.loads(json.dumps(squash.data_config, default=list))
    exported = _Preprocess(manifest_config, squash.name).transform()
    assert torch.equal(exported(photo), squash.transform()(photo))


def test_resize_is_kept_in_the_spec_and_rebuilt_from_it():
    from types import SimpleNamespace

    from captionkit.models.run_folder import encoder_for

    crop, squash = _random_lite0("crop"), _random_lite0("squash")
    assert crop.fingerprint() != squash.fingerprint()  # their feature stores are apart
    assert squash.spec()["resize"] == "squash"
    rebuilt = encoder_for(SimpleNamespace(encoder=squash.spec(), run_dir=None))
    assert rebuilt.resize == "squash" and rebuilt.data_config == squash.data_config
    # A run from before `resize` existed has no such key: it saw centre crops.
    old = {k: v for k, v in crop.spec().items() if k != "resize"}
    assert encoder_for(SimpleNamespace(encoder=old, run_dir=None)).resize == "crop"
    with pytest.raises(CaptionkitError, match="other weights"):  # squash features for a crop run
        encoder_for(SimpleNamespace(encoder={**old, "resize": "squash"}, run_dir=None))


def test_key_mapping_renames_every_key_to_timm():
    source = torch.load(packaged_weights_path(), map_location="cpu", weights_only=True)
    import timm

    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    mapped = efficientnet_pytorch_to_timm(source, [len(s) for s in model.blocks])
    assert set(mapped) == set(model.state_dict())
    assert mapped["blocks.0.0.conv_pw.weight"] is source["_blocks.0._project_conv.weight"]
    assert mapped["blocks.1.0.conv_pwl.weight"] is source["_blocks.1._project_conv.weight"]
    assert mapped["blocks.6.0.bn3.running_var"] is source["_blocks.15._bn2.running_var"]
    assert mapped["classifier.bias"] is source["_fc.bias"]


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_weights_from_a_local_file_equal_the_source(tmp_path, suffix):
    source = create_encoder("resnet18", weights="none").model.state_dict()
    source = {k: v + 0.5 if v.is_floating_point() else v for k, v in source.items()}
    path = tmp_path / f"weights{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(source, path)
    else:
        torch.save(source, path)
    loaded = create_encoder("resnet18", weights=str(path)).model.state_dict()
    assert all(torch.equal(loaded[k], source[k]) for k in source)


def test_bad_weights_files_and_names(tmp_path):
    with pytest.raises(CaptionkitError, match="not found"):
        create_encoder("resnet18", weights=str(tmp_path / "nope.pth"))
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CaptionkitError, match="cannot read encoder weights"):
        load_state_dict(tmp_path / "junk.pth", "resnet18")
    with pytest.raises(CaptionkitError, match="unknown encoder"):
        create_encoder("no_such_net")


def test_pooled_and_grid_shapes(lite0):
    pooled, grid = lite0(torch.zeros(2, 3, 224, 224))
    assert pooled.shape == (2, 1280) and grid.shape == (2, 49, 1280)
    assert torch.allclose(grid.mean(1), pooled, atol=1e-5)  # the head is a global average pool


def test_the_encoder_runs_channels_last_with_the_numbers_and_weights_of_nchw(lite0, tmp_path):
    """`forward` makes NCHW images channels_last (faster on CPU): the grid equals the backbone's
    own NCHW forward, and the weights keep their layout (a state dict saves to safetensors)."""
    from safetensors.torch import save_file

    images = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        reference = lite0.model.forward_features(images).flatten(2).transpose(1, 2)
        seen = []
        hook = lite0.model.conv_stem.register_forward_pre_hook(lambda m, x: seen.append(x[0]))
        _, grid = lite0(images)
        hook.remove()
    assert seen[0].is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(grid, reference, atol=1e-4)
    save_file(lite0.model.state_dict(), tmp_path / "encoder.safetensors")


def test_folded_batch_norms_give_the_same_features_from_a_copy(lite0):
    """`for_inference` folds every batch norm of Lite0 into its convolution (timm's
    BatchNormAct2d keeps its ReLU6): the same pooled and grid features up to rounding, the same
    fingerprint, and the encoder it was made from is left as it was."""
    norms = [m for m in lite0.model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    stem = lite0.model.conv_stem.weight.clone()
    fast = lite0.for_inference()
    assert fast is not lite0 and fast.fingerprint() == lite0.fingerprint()
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fast.model.modules())
    assert [m for m in lite0.model.modules() if isinstance(m, torch.nn.BatchNorm2d)] == norms
    assert torch.equal(lite0.model.conv_stem.weight, stem) and len(norms) == 49
    images = torch.randn(3, 3, 224, 224)
    with torch.no_grad():
        (pooled, grid), (fast_pooled, fast_grid) = lite0(images), fast(images)
    assert torch.allclose(fast_grid, grid, rtol=1e-4, atol=1e-4)
    assert torch.allclose(fast_pooled, pooled, rtol=1e-4, atol=1e-4)
    assert not torch.equal(fast_grid, torch.zeros_like(fast_grid))


def test_a_convolution_read_past_its_norm_is_not_folded():
    """A norm folds only where its convolution's output goes nowhere else: with a skip from the
    convolution's output the fold would change the numbers, so the model is kept as it is."""
    from captionkit.encoders.fold import folded

    class Skip(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.norm = torch.nn.Conv2d(3, 3, 3, padding=1), torch.nn.BatchNorm2d(3)

        def forward(self, x):
            y = self.conv(x)
            return self.norm(y) + y

    torch.manual_seed(0)
    model = Skip().eval()
    model.norm.running_mean.uniform_(-1, 1)
    model.norm.running_var.uniform_(0.5, 2)
    same, count = folded(model, torch.randn(2, 3, 8, 8))
    assert same is model and count == 0
    plain = torch.nn.Sequential(torch.nn.Conv2d(3, 3, 3), torch.nn.BatchNorm2d(3)).eval()
    plain[1].running_mean.uniform_(-1, 1)
    x = torch.randn(2, 3, 8, 8)
    fast, count = folded(plain, x)
    assert count == 1 and isinstance(fast[1], torch.nn.Identity)
    assert torch.allclose(fast(x), plain(x), atol=1e-5)


def test_feature_store_caches_and_invalidates(tmp_path, lite0):
    write_images(tmp_path / "img", ["a.png", "b.png", "c.png"])
    paths = sorted((tmp_path / "img").iterdir())
    store = extract_features(lite0, paths, tmp_path / "cache")
    assert store.pooled.shape == (3, 1280) and store.grid.shape == (3, 49, 1280)
    assert extract_features(lite0, paths, tmp_path / "cache").folder == store.folder  # cache hit
    with torch.no_grad():
        expected, _ = lite0(lite0.transform()(Image.open(paths[1]).convert("RGB"))[None])
    assert torch.allclose(torch.tensor(store.pooled[1]).float(), expected[0], atol=2e-2)

    write_images(tmp_path / "img", ["b.png"], seed=9)  # a changed image: new size/mtime
    os.utime(paths[1], ns=(1, 1))
    assert extract_features(lite0, paths, tmp_path / "cache").folder != store.folder
    random_encoder = create_encoder(weights="none")  # same name, other weights
    assert extract_features(random_encoder, paths, tmp_path / "cache").folder != store.folder
    assert not list((tmp_path / "cache").glob("*.partial"))  # no half-written store left


def test_unreadable_images_are_recorded_not_fatal(tmp_path, lite0):
    write_images(tmp_path, ["ok.png"])
    (tmp_path / "text.jpg").write_text("this is not an image")
    paths = [tmp_path / "ok.png", tmp_path / "text.jpg", tmp_path / "missing.jpg"]
    store = extract_features(lite0, paths, tmp_path / "cache")
    assert store.has(paths[0])
    assert not store.has(paths[1]) and not store.has(paths[2])
    assert store.failed[str(paths[1].resolve())][0] == "unreadable_image"
    assert store.failed[str(paths[2].resolve())][0] == "missing_image"
    # A cache hit keeps the failures, so a second run reports them again.
    assert extract_features(lite0, paths, tmp_path / "cache").failed == store.failed


@pytest.mark.parametrize("name", KNOWN_ENCODERS)
def test_every_listed_encoder_family_gives_pooled_and_grid(name, recwarn):
    encoder = create_encoder(name, weights="none")
    size = encoder.data_config["input_size"]
    pooled, grid = encoder(torch.rand(2, *size))
    d = encoder.feature_dim
    assert pooled.shape == (2, d) and grid.shape[0] == 2 and grid.shape[2] == d
    fmap = encoder.model.forward_features(torch.rand(1, *size))
    if name.startswith("vit"):  # patch tokens without the class token
        assert grid.shape[1] == (size[1] // 16) * (size[2] // 16) == fmap.shape[1] - 1
    else:
        assert grid.shape[1] == fmap.shape[2] * fmap.shape[3]


class SimulatedCrash(Exception):
    pass


def test_interrupted_extraction_resumes_where_it_stopped(tmp_path, lite0, monkeypatch):
    write_images(tmp_path / "img", [f"{i}.png" for i in range(10)])
    paths = sorted((tmp_path / "img").iterdir())
    reference = extract_features(lite0, paths, tmp_path / "clean", batch_size=4, num_workers=0)

    calls, crashed = [], []
    forward = type(lite0).forward

    def failing_forward(self, images):
        calls.append(len(images))
        if len(calls) == 3 and not crashed:  # the grid-size probe is call 1
            crashed.append(True)
            raise SimulatedCrash  # as if the process died during the second batch
        return forward(self, images)

    monkeypatch.setattr(type(lite0), "forward", failing_forward)
    with pytest.raises(SimulatedCrash):
        extract_features(lite0, paths, tmp_path / "cache", batch_size=4, num_workers=0)
    (partial,) = (tmp_path / "cache").glob("*.partial")
    assert not list((tmp_path / "cache").glob("*/index.json"))  # nothing complete is claimed
    calls.clear()
    store = extract_features(lite0, paths, tmp_path / "cache", batch_size=4, num_workers=0)
    assert calls == [1, 4, 2]  # the grid-size probe, then only the 6 images not yet done
    assert not partial.exists()
    np.testing.assert_array_equal(np.asarray(store.pooled), np.asarray(reference.pooled))
    np.testing.assert_array_equal(np.asarray(store.grid), np.asarray(reference.grid))


def test_hub_weights_offline_give_one_clear_line(monkeypatch):
    import timm

    def offline(name, pretrained=False, **kwargs):
        if pretrained:  # what huggingface_hub raises without network, over several lines
            raise OSError("We couldn't connect to 'https://huggingface.co'.\nCheck your connection")
        return real(name, pretrained=False, **kwargs)

    real = timm.create_model
    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(CaptionkitError) as info:
        create_encoder("resnet18", weights="hub")
    message = str(info.value)
    assert "could not download pretrained weights for encoder 'resnet18'" in message
    assert "--encoder-weights PATH" in message and "\n" not in message
