"""Batch norms folded into the convolutions before them, for inference.

In eval mode a BatchNorm2d is a fixed per-channel scale and shift, s = γ / √(var + ε) and
β - mean·s. When it reads a convolution's output, the convolution can apply them itself
(W' = W·s, b' = (b - mean)·s + β) and the norm's own pass over the activations goes: about a
quarter of EfficientNet-Lite0's time on a CPU, where nothing else fuses them. timm's
`BatchNormAct2d` (norm, then dropout and activation in one module) keeps its dropout and
activation. The numbers change only by float rounding; `folded` checks that on an image and
keeps the model as it was if they do not agree.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


def folded(model: nn.Module, example: torch.Tensor) -> tuple[nn.Module, int]:
    """(a copy of eval-mode `model` with its foldable batch norms folded, how many), or
    (`model` itself, 0) when there are none or the copy's output on `example` (an input batch)
    differs from the model's by more than rounding."""
    with torch.no_grad():
        pairs, expected = _conv_norm_pairs(model, example)
        if not pairs:
            return model, 0
        names = {m: name for name, m in model.named_modules()}
        copied = copy.deepcopy(model)
        for conv, norm in pairs:
            _fold(copied.get_submodule(names[conv]), copied.get_submodule(names[norm]))
            _replace(copied, names[norm], _after_norm(norm))
        got = _forward(copied, example)
    scale = float(expected.abs().max()) or 1.0
    if not torch.allclose(got, expected, rtol=1e-4, atol=1e-4 * scale):
        return model, 0  # a conv's output read by more than its norm: not foldable here
    return copied, len(pairs)


def _forward(model: nn.Module, example: torch.Tensor) -> torch.Tensor:
    out = model.forward_features(example) if hasattr(model, "forward_features") else model(example)
    return out.float()


def _conv_norm_pairs(model: nn.Module, example: torch.Tensor):
    """([(conv, norm)] where the eval-mode norm read the conv's output tensor itself, the
    model's output on `example`), from one forward pass with hooks."""
    outputs, pairs = {}, []  # id of a conv's output -> (the tensor, kept alive; the conv)

    def conv_hook(conv, inputs, output):
        outputs[id(output)] = (output, conv)

    def norm_hook(norm, inputs, output):
        found = outputs.get(id(inputs[0]))
        if found is not None and found[0] is inputs[0] and _foldable(norm):
            pairs.append((found[1], norm))

    hooks = [
        m.register_forward_hook(conv_hook if isinstance(m, nn.Conv2d) else norm_hook)
        for m in model.modules()
        if isinstance(m, (nn.Conv2d, nn.BatchNorm2d))
    ]
    try:
        output = _forward(model, example)
    finally:
        for hook in hooks:
            hook.remove()
    used = [norm for _, norm in pairs]  # a norm run twice (a shared module) stays
    return [(c, n) for c, n in pairs if used.count(n) == 1], output


def _foldable(norm: nn.BatchNorm2d) -> bool:
    return not norm.training and norm.running_mean is not None


def _fold(conv: nn.Conv2d, norm: nn.BatchNorm2d) -> None:
    scale = torch.rsqrt(norm.running_var + norm.eps)  # [C]
    shift = -norm.running_mean * scale
    if norm.affine:
        scale, shift = scale * norm.weight, shift * norm.weight + norm.bias
    bias = conv.bias if conv.bias is not None else torch.zeros_like(scale)
    conv.weight = nn.Parameter(conv.weight * scale.view(-1, 1, 1, 1), requires_grad=False)
    conv.bias = nn.Parameter(bias * scale + shift, requires_grad=False)


def _after_norm(norm: nn.Module) -> nn.Module:
    """What is left of a folded norm: timm's BatchNormAct2d dropout and activation, else
    nothing."""
    rest = [getattr(norm, name) for name in ("drop", "act") if hasattr(norm, name)]
    return nn.Sequential(*copy.deepcopy(rest)) if rest else nn.Identity()


def _replace(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, module)
