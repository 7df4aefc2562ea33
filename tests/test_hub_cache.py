"""Hub weights already in the local Hugging Face cache: listed offline, loaded without network."""

import pytest
import timm
import torch
from safetensors.torch import save_file

from captionkit.cli import main
from captionkit.encoders import create_encoder
from captionkit.encoders.factory import cached_hub_weights, list_encoders

HF_VARIABLES = ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME", "XDG_CACHE_HOME")


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An empty Hugging Face hub cache that `HF_HUB_CACHE` points to."""
    for name in HF_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    return tmp_path / "hub"


def cache_file(hub, model: str, filename: str, tensors=None):
    """Put a file where a download of timm's weights for `model` puts it (the hub's cache
    layout: refs/main names the snapshot holding the file)."""
    repo = timm.models.get_pretrained_cfg(model).hf_hub_id
    folder = hub / f"models--{repo.replace('/', '--')}"
    snapshot = folder / "snapshots" / ("1" * 40)
    snapshot.mkdir(parents=True)
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text("1" * 40)
    if tensors is None:
        (snapshot / filename).write_bytes(b"weights")
    else:
        save_file(tensors, snapshot / filename)
    return snapshot / filename


def test_cached_hub_weights_are_listed_as_offline(hub_cache, capsys):
    cache_file(hub_cache, "resnet50", "model.safetensors")
    cache_file(hub_cache, "vit_small_patch16_224", "pytorch_model.bin")  # timm's other name
    weights = {e["name"]: e["weights"] for e in list_encoders()}
    assert weights["tf_efficientnet_lite0"] == "offline (packaged)"
    assert weights["resnet50"] == weights["vit_small_patch16_224"] == "offline (cached)"
    assert weights["resnet101"] == weights["efficientnet_b0"] == "hub (online)"
    assert main(["encoders"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "resnet50                     offline (cached)" in lines
    assert "resnet101                    hub (online)" in lines


def test_hf_home_is_respected_and_a_snapshot_without_the_file_is_not_cached(tmp_path, monkeypatch):
    for name in HF_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    cache_file(tmp_path / "home" / "hub", "resnet50", "config.json")  # no weights file
    assert cached_hub_weights("resnet50") is None
    found = cache_file(tmp_path / "home" / "hub", "resnet101", "model.safetensors")
    assert cached_hub_weights("resnet101") == found
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "elsewhere"))  # wins over HF_HOME
    assert cached_hub_weights("resnet101") is None


def test_hub_weights_load_from_the_cache_without_network(hub_cache, monkeypatch):
    name = "test_efficientnet"  # timm's tiny test network, with a hub entry
    model = timm.create_model(name, pretrained=False)
    source = {k: v + 0.25 if v.is_floating_point() else v for k, v in model.state_dict().items()}
    cache_file(hub_cache, name, "model.safetensors", source)

    def no_network(*args, **kwargs):
        raise AssertionError("the hub was asked although the weights are cached")

    monkeypatch.setattr(timm.models._hub, "hf_hub_download", no_network)
    loaded = create_encoder(name, weights="hub").model.state_dict()
    assert all(torch.equal(loaded[k], source[k]) for k in source)
