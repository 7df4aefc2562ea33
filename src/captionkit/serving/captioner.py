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
from captionkit.decoding import DecodingOptions, DecodingResult, decode
from captionkit.errors import CaptionkitError
from captionkit.evaluation.evaluate import encoder_for, run_options
from captionkit.evaluation.rerank import run_reranker
from captionkit.models.checkpoint import load_checkpoint
from captionkit.reranking import Reranker, RerankOptions


@dataclass
class Caption:
    """A generated caption and its total log-probability; with `attention=True` (models that
    attend) also its tokens and where the model looked for each."""

    text: str
    score: float
    tokens: list[str] | None = None
    """The generated tokens (words, or BPE pieces), `<eos>` not included; with attention only."""
    attention: np.ndarray | None = None
    """Attention weights [T, gh, gw] over the encoder grid, one map per token in `tokens`."""


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
        self.rerank = RerankOptions()
        """Re-ranking when `caption` is given none (`captionkit serve --rerank`)."""
        self._reranker: Reranker | None = None  # keeps the index and its tokenized captions

    @classmethod
    def load(cls, run_dir: str | Path, device: str = "cpu",
             rerank: RerankOptions | None = None) -> Captioner:  # fmt: skip
        """`rerank`: the default re-ranking of `caption` (the run's neighbour index is read
        here, so a run without one fails now)."""
        trained = load_checkpoint(run_dir, device)
        captioner = cls(trained, encoder_for(trained), device)
        if rerank is not None:
            captioner.rerank = rerank
            captioner.reranker(rerank)
        return captioner

    def reranker(self, options: RerankOptions) -> Reranker:
        """A re-ranker with `options` over the run's neighbour index (read once)."""
        self._reranker = run_reranker(self.trained, options, self._reranker)
        return self._reranker

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
            image = _from_array(image)
        elif not isinstance(image, Image.Image):
            raise CaptionkitError(
                f"cannot caption a {type(image).__name__}: give a path, a PIL image or an array"
            )
        return self.transform(image.convert("RGB"))

    @torch.inference_mode()
    def caption(self, images: list, beam_size: int = 3, n_best: int = 1,
                options: DecodingOptions | None = None, batch_size: int = 32,
                attention: bool = False,
                rerank: RerankOptions | None = None) -> list[list[Caption]]:  # fmt: skip
        """Up to `n_best` captions per image, best first; or, with `options` (which then replace
        `beam_size` and `n_best`), whatever they ask for: e.g. `num_samples` sampled captions in
        drawing order. The length limit is the run's unless `options.max_length` is set.
        `attention=True` adds each caption's tokens and attention maps (models that attend; the
        others return captions without them). `rerank` (default: `self.rerank`): re-rank
        `rerank.candidates` candidates per image and return the first `n_best` of them."""
        options = options or DecodingOptions(beam_size=beam_size, n_best=n_best)
        rerank = rerank or self.rerank
        keep = options.n_best  # re-ranking: how many of its candidates to return
        if rerank.active:
            reranker, options = self.reranker(rerank), rerank.decoding(options)
        options = run_options(self.trained, dataclasses.replace(options, attention=attention))
        out = []
        for start in range(0, len(images), batch_size):
            pixels = torch.stack([self._pixels(im) for im in images[start : start + batch_size]])
            pooled, grid = self.encoder(pixels.to(self.device))  # [B, D], [B, L, D]
            results = decode(self.trained.model, pooled, grid, options)
            if rerank.active:
                text = lambda h: self.trained.vocab.decode(h.tokens)  # noqa: E731
                results = [hyps[:keep] for hyps in reranker.rerank(results, text, pooled.cpu())]
            out += [[self._caption(h, grid) for h in hyps] for hyps in results]
        return out

    def _caption(self, hyp: DecodingResult, grid: torch.Tensor) -> Caption:
        text = detokenize(self.trained.vocab.decode(hyp.tokens))
        if hyp.attention is None:
            return Caption(text, hyp.score)
        tokens = [self.trained.vocab.decode([t]) for t in hyp.tokens]
        side = self._grid_side(grid)
        maps = np.asarray(hyp.attention, dtype=np.float32)[: len(tokens)]  # [T, L]
        return Caption(text, hyp.score, tokens, maps.reshape(-1, side, side))

    def _grid_side(self, grid: torch.Tensor) -> int:
        side = round(grid.shape[1] ** 0.5)
        if side * side != grid.shape[1]:
            raise CaptionkitError(
                f"encoder {self.encoder.name}: its grid of {grid.shape[1]} positions is not "
                "square, cannot draw attention maps"
            )
        return side

    def seen(self, image) -> np.ndarray:
        """The image as the encoder sees it (resized and cropped), uint8 [H, W, 3]: what
        attention maps are drawn over."""
        return self._unnormalize(self._pixels(image))

    @torch.inference_mode()
    def attend(self, images: list, options: DecodingOptions | None = None) -> list[AttendedCaption]:
        """The best caption of each image with its per-token attention maps (attention models
        only; default options: greedy)."""
        if not self.attends:
            name = self.trained.config["model"]["name"]
            raise CaptionkitError(f"model '{name}' has no attention over the image to show "
                                  "(train with --model attention)")  # fmt: skip
        options = options or DecodingOptions()
        out = []
        for image, hyps in zip(images, self.caption(images, options=options, attention=True)):
            best = max(hyps, key=lambda h: h.score) if options.sample else hyps[0]
            out.append(AttendedCaption(best.tokens, best.attention, self.seen(image), best.score))
        return out

    def _unnormalize(self, pixels: torch.Tensor) -> np.ndarray:
        """Normalised pixels [3, H, W] -> the uint8 image [H, W, 3] they came from."""
        mean = torch.tensor(self.encoder.data_config["mean"])[:, None, None]
        std = torch.tensor(self.encoder.data_config["std"])[:, None, None]
        rgb = (pixels.cpu() * std + mean).clamp(0, 1) * 255
        return rgb.round().byte().permute(1, 2, 0).numpy()


def _from_array(array: np.ndarray) -> Image.Image:
    """An HxW or HxWx3/4 uint8 array as an image; other arrays are refused by name."""
    if (
        array.dtype != np.uint8
        or array.ndim not in (2, 3)
        or (array.ndim == 3 and array.shape[2] not in (3, 4))
    ):
        raise CaptionkitError(
            f"an image array must be uint8 [H, W], [H, W, 3] or [H, W, 4], "
            f"not {array.dtype} {list(array.shape)}"
        )
    return Image.fromarray(array)
