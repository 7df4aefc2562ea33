"""`Captioner`: the Python API for captioning images with a trained run."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from captionkit.data.images import load_image
from captionkit.data.vocab import detokenize
from captionkit.decoding import DecodingOptions, decode
from captionkit.errors import CaptionkitError
from captionkit.evaluation.evaluate import encoder_for, run_options
from captionkit.models.checkpoint import load_checkpoint


@dataclass
class Caption:
    """A generated caption and its total log-probability."""

    text: str
    score: float


@dataclass
class AttendedCaption:
    """A caption with where the model looked for each of its tokens."""

    tokens: list[str]
    """The generated tokens (words, or BPE pieces), `<eos>` not included."""
    attention: np.ndarray
    """Attention weights [T, gh, gw] over the encoder grid, one map per token."""
    image: np.ndarray
    """The image as the encoder saw it (resized and cropped), uint8 [H, W, 3]."""
    score: float


class Captioner:
    """Loads a run folder once, then captions images (paths, PIL images or HxWx3 arrays)."""

    def __init__(self, trained, encoder, device: str = "cpu"):
        self.trained, self.encoder, self.device = trained, encoder.to(device), device
        self.transform = encoder.transform()

    @classmethod
    def load(cls, run_dir: str | Path, device: str = "cpu") -> Captioner:
        trained = load_checkpoint(run_dir, device)
        return cls(trained, encoder_for(trained), device)

    @property
    def attends(self) -> bool:
        """Whether the model attends over the image grid (so `attend` can show where)."""
        return hasattr(self.trained.model, "attention")

    def _pixels(self, image) -> torch.Tensor:
        if isinstance(image, (str, Path)):
            try:
                image = load_image(Path(image))
            except FileNotFoundError:
                raise CaptionkitError(f"{image}: no such image file") from None
            except (OSError, ValueError) as e:
                raise CaptionkitError(f"{image}: cannot read image ({e})") from None
        elif isinstance(image, np.ndarray):
            image = Image.fromarray(image)
        return self.transform(image.convert("RGB"))

    @torch.inference_mode()
    def caption(self, images: list, beam_size: int = 3, n_best: int = 1,
                options: DecodingOptions | None = None,
                batch_size: int = 32) -> list[list[Caption]]:  # fmt: skip
        """Up to `n_best` captions per image, best first; or, with `options` (which then replace
        `beam_size` and `n_best`), whatever they ask for: e.g. `num_samples` sampled captions in
        drawing order. The length limit is the run's unless `options.max_length` is set."""
        options = options or DecodingOptions(beam_size=beam_size, n_best=n_best)
        options = run_options(self.trained, options)
        out = []
        for start in range(0, len(images), batch_size):
            pixels = torch.stack([self._pixels(im) for im in images[start : start + batch_size]])
            pooled, grid = self.encoder(pixels.to(self.device))
            for hyps in decode(self.trained.model, pooled, grid, options):
                texts = [detokenize(self.trained.vocab.decode(h.tokens)) for h in hyps]
                out.append([Caption(t, h.score) for t, h in zip(texts, hyps)])
        return out

    @torch.inference_mode()
    def attend(self, images: list, options: DecodingOptions | None = None) -> list[AttendedCaption]:
        """The best caption of each image with its per-token attention maps (attention models
        only; default options: greedy)."""
        if not self.attends:
            name = self.trained.config["model"]["name"]
            raise CaptionkitError(f"model '{name}' has no attention over the image to show "
                                  "(train with --model attention)")  # fmt: skip
        options = dataclasses.replace(options or DecodingOptions(), attention=True)
        options = run_options(self.trained, options)
        pixels = torch.stack([self._pixels(im) for im in images])  # [B, 3, H, W]
        pooled, grid = self.encoder(pixels.to(self.device))  # [B, D], [B, L, D]
        side = round(grid.shape[1] ** 0.5)
        if side * side != grid.shape[1]:
            raise CaptionkitError(
                f"encoder {self.encoder.name}: its grid of {grid.shape[1]} positions is not "
                "square, cannot draw attention maps"
            )
        out = []
        for image, hyps in zip(pixels, decode(self.trained.model, pooled, grid, options)):
            best = max(hyps, key=lambda h: h.score) if options.sample else hyps[0]
            tokens = [self.trained.vocab.decode([t]) for t in best.tokens]
            maps = np.asarray(best.attention, dtype=np.float32)[: len(tokens)]  # [T, L]
            seen = self._unnormalize(image)
            out.append(AttendedCaption(tokens, maps.reshape(-1, side, side), seen, best.score))
        return out

    def _unnormalize(self, pixels: torch.Tensor) -> np.ndarray:
        """Normalised pixels [3, H, W] -> the uint8 image [H, W, 3] they came from."""
        mean = torch.tensor(self.encoder.data_config["mean"])[:, None, None]
        std = torch.tensor(self.encoder.data_config["std"])[:, None, None]
        rgb = (pixels.cpu() * std + mean).clamp(0, 1) * 255
        return rgb.round().byte().permute(1, 2, 0).numpy()
