"""`Captioner`: the Python API for captioning images with a trained run."""

from __future__ import annotations

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


class Captioner:
    """Loads a run folder once, then captions images (paths, PIL images or HxWx3 arrays)."""

    def __init__(self, trained, encoder, device: str = "cpu"):
        self.trained, self.encoder, self.device = trained, encoder.to(device), device
        self.transform = encoder.transform()

    @classmethod
    def load(cls, run_dir: str | Path, device: str = "cpu") -> Captioner:
        trained = load_checkpoint(run_dir, device)
        return cls(trained, encoder_for(trained), device)

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
