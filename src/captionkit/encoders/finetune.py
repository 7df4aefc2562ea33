"""Fine-tuning the last blocks of a timm encoder, with augmenting training transforms.

A *block* is one coarse group of timm's own `model.group_matcher(coarse=True)`, after the stem
(the first group, never trained) and before the classifier. Per family:
- EfficientNet / EfficientNet-Lite / MobileNetV3: a stage (`blocks.0` .. `blocks.6`: 7 blocks);
- ResNet: a layer (`layer1` .. `layer4`: 4 blocks);
- ViT: a transformer block (`blocks.0` .. `blocks.11` for ViT-S/B: 12 blocks);
- Inception-v3: the `Conv2d_3`/`Conv2d_4` convolutions, then each mixed module (12 blocks);
- ConvNeXt: a stage (4 blocks).
timm puts the layers that follow the last block (EfficientNet's `conv_head`/`bn2`, ViT's final
`norm`) into the last block's group, so they train with it; the layers of the head group that are
not the classifier (e.g. ConvNeXt's `head.norm`) train too. Everything else stays frozen, and its
BatchNorm and Dropout layers stay in eval mode (see `ImageEncoder.train`).
"""

from __future__ import annotations

from torch import nn
from torchvision import transforms

from captionkit.encoders.factory import ImageEncoder
from captionkit.errors import CaptionkitError


def encoder_blocks(model: nn.Module) -> tuple[list[list[str]], list[str]]:
    """Parameter names of each block, first to last, and of the non-classifier head layers."""
    from timm.models import group_parameters

    groups = group_parameters(model, model.group_matcher(coarse=True))
    ordered = [groups[k] for k in sorted(groups)]
    classifier_ids = {id(p) for p in model.get_classifier().parameters()}
    classifier = {n for n, p in model.named_parameters() if id(p) in classifier_ids}
    head: list[str] = []
    if len(ordered) > 1 and classifier & set(ordered[-1]):
        head = [n for n in ordered.pop() if n not in classifier]
    return ordered[1:], head


def unfreeze_last_blocks(encoder: ImageEncoder, n_blocks: int) -> list[nn.Parameter]:
    """Let the last `n_blocks` blocks (and the head layers after them) train; everything else
    stays frozen. Returns the trainable parameters. Raises CaptionkitError for a bad count."""
    if not hasattr(encoder.model, "group_matcher"):
        raise CaptionkitError(
            f"encoder {encoder.name}: timm does not group its layers into "
            "blocks (no group_matcher), so it cannot be fine-tuned"
        )
    blocks, head = encoder_blocks(encoder.model)
    if not 1 <= n_blocks <= len(blocks):
        raise CaptionkitError(
            f"--finetune-blocks {n_blocks}: encoder {encoder.name} has {len(blocks)} blocks "
            f"(choose 1 to {len(blocks)})"
        )
    names = {n for block in blocks[-n_blocks:] for n in block} | set(head)
    encoder.model.requires_grad_(False)
    params = [p for n, p in encoder.model.named_parameters() if n in names]
    for p in params:
        p.requires_grad_(True)
    # The modes stay as they are (eval, from `create_encoder`): features extracted before
    # training must not move BatchNorm statistics. Training calls `encoder.train()` itself.
    return params


def augmenting_transform(encoder: ImageEncoder, crop_scale_min: float, hflip: float):
    """Training preprocessing: a random resized crop (keeping `crop_scale_min` to all of the image
    area, aspect 3/4..4/3) at the encoder's input size, a horizontal flip with probability
    `hflip`, and the encoder's own normalisation. PIL image -> tensor `[3, H, W]`."""
    config = encoder.data_config
    _, height, width = config["input_size"]
    interpolation = transforms.InterpolationMode(config.get("interpolation", "bicubic"))
    steps = [
        transforms.RandomResizedCrop(
            (height, width), scale=(crop_scale_min, 1.0), interpolation=interpolation
        ),  # fmt: skip
        transforms.RandomHorizontalFlip(hflip),
        transforms.ToTensor(),
        transforms.Normalize(config["mean"], config["std"]),
    ]
    return transforms.Compose(steps)
