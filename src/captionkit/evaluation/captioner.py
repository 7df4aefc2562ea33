"""`Captioner`: the Python API for captioning images with a trained run."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from captionkit.data.image_files import load_image
from captionkit.data.ptb_tokenizer import detokenize
from captionkit.decoding import DEFAULT_MAX_LENGTH, DecodingOptions, DecodingResult, decode
from captionkit.decoding.ensemble import Ensemble, check_same_tokenizer
from captionkit.errors import CaptionkitError
from captionkit.models.quantize import (
    check_quantize,
    decoder_precision,
    encoder_precision,
    quantize_decoder,
)
from captionkit.models.run_folder import TrainedModel, encoder_for, load_checkpoint
from captionkit.reranking import Reranker, RerankOptions, run_reranker


def run_options(trained: TrainedModel, options: DecodingOptions) -> DecodingOptions:
    """`options`, with the caption length limit the run was trained with unless they set one."""
    if options.max_length is not None:
        return options
    max_length = trained.data_setting("max_length", DEFAULT_MAX_LENGTH)
    return dataclasses.replace(options, max_length=max_length)


def encoders_for(members: list[TrainedModel]) -> list:
    """`encoder_for` of each run; runs trained on the same encoder weights share one object (so
    an ensemble computes those features once)."""
    built = {}
    for trained in members:
        key = (trained.encoder["name"], trained.encoder["fingerprint"])
        if key not in built:
            built[key] = encoder_for(trained)
    return [built[(t.encoder["name"], t.encoder["fingerprint"])] for t in members]


def load_members(run_dirs: list[str | Path], device: str = "cpu") -> list[TrainedModel]:
    """The runs of an ensemble, refused unless they share their tokenizer."""
    members = [load_checkpoint(run, device) for run in run_dirs]
    check_same_tokenizer([(str(run), t.tokenizer) for run, t in zip(run_dirs, members)])
    return members


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
    """Loads a run folder (or several, an ensemble) once, then captions images (paths, PIL
    images or HxWx3 arrays).

    An ensemble (`members`, even an empty list) decodes as one `decoding.Ensemble` of the
    first run and the members, each on its own encoder's features (an encoder object shared by
    several members runs once). `trained` (its config, tokenizer and length limit) speaks for
    the ensemble. Attention maps: see `Ensemble`; `seen` shows the image as the encoder of the
    first member that attends saw it."""

    def __init__(
        self,
        trained,
        encoder,
        device: str = "cpu",
        members: list | None = None,
        quantize: str = "none",
    ):
        self.trained, self.device = trained, device
        self.quantize = check_quantize(quantize, device)
        """`none`, `int8` or `bf16`: how the models run (`captionkit.models.quantize`)."""
        self.ensemble = members is not None
        pairs = [(trained, encoder), *(members or [])]
        if self.ensemble:
            check_same_tokenizer([(str(t.run_dir), t.tokenizer) for t, _ in pairs])
        self.members = [t for t, _ in pairs]  # TrainedModel of each run
        self.models = [quantize_decoder(t.model, quantize) for t in self.members]
        distinct = []  # distinct encoders, and each member's index among them
        for _, e in pairs:
            if not any(e is known for known in distinct):
                distinct.append(e.to(device))
        self._member_encoder = [next(i for i, k in enumerate(distinct) if k is e) for _, e in pairs]
        self.encoders = [e.for_inference() for e in distinct]  # copies: the callers' stay as given
        self.encoder = self.encoders[0]
        self._transforms = [e.transform() for e in self.encoders]
        self.rerank = RerankOptions()
        """Re-ranking when `caption` is given none (`captionkit serve --rerank`; default `auto`:
        consensus when the run has a neighbour index and the decoding is a beam search)."""
        self._reranker: Reranker | None = None  # keeps the index and its tokenized captions
        attending = [i for i, m in enumerate(self.models) if m.attends] or [0]
        seen = self._member_encoder[attending[0]]
        self._seen_encoder, self._seen_transform = self.encoders[seen], self._transforms[seen]

    @classmethod
    def load(
        cls,
        run_dir: str | Path | list,
        device: str = "cpu",
        rerank: RerankOptions | None = None,
        quantize: str = "none",
    ) -> Captioner:
        """A run folder, or a list of them: an ensemble (they must share the tokenizer).
        `rerank`: the default re-ranking of `caption` (the neighbour index of the run, the first
        of an ensemble, is read here, so a run without one fails now). `quantize`: `int8` or
        `bf16` for faster CPU inference (`captionkit.models.quantize`; `none`: float32)."""
        if not isinstance(run_dir, (list, tuple)):
            trained = load_checkpoint(run_dir, device)
            captioner = cls(trained, encoder_for(trained), device, quantize=quantize)
        else:
            members = load_members(list(run_dir), device)
            pairs = list(zip(members, encoders_for(members)))
            captioner = cls(*pairs[0], device, members=pairs[1:], quantize=quantize)
        if rerank is not None:
            captioner.rerank = rerank
            captioner.reranker(rerank)
        return captioner

    def reranker(self, options: RerankOptions, decoding: DecodingOptions | None = None) -> Reranker:
        """A re-ranker with `options` (`auto` resolved for `decoding`) over the run's neighbour
        index (read once)."""
        self._reranker = run_reranker(self.trained, options, self._reranker, decoding)
        return self._reranker

    @property
    def attends(self) -> bool:
        """Whether the model (a member of an ensemble) attends over the image grid (so `attend`
        can show where)."""
        return any(m.attends for m in self.models)

    def _image(self, image) -> Image.Image:
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
        return image.convert("RGB")

    @torch.inference_mode()
    def caption(
        self,
        images: list,
        options: DecodingOptions | None = None,
        batch_size: int = 32,
        attention: bool = False,
        rerank: RerankOptions | None = None,
    ) -> list[list[Caption]]:
        """Captions of each image as `options` ask for them (default `DecodingOptions()`: the best
        of a beam of 3): `n_best` captions best first, or `num_samples` sampled captions in
        drawing order. The length limit is the run's unless `options.max_length` is set.
        `attention=True` adds each caption's tokens and attention maps (models that attend; the
        others return captions without them). `rerank` (default: `self.rerank`): re-rank
        `rerank.candidates` candidates per image and return the first `n_best` of them."""
        options = options or DecodingOptions()
        reranker = self.reranker(rerank or self.rerank, options)
        keep, reranking = options.n_best, reranker.options.active  # keep: of the candidates
        options = reranker.options.decoding(options)
        options = run_options(self.trained, dataclasses.replace(options, attention=attention))
        model = Ensemble(self.models, options.ensemble_mean) if self.ensemble else self.models[0]
        text = lambda h: self.trained.tokenizer.decode(h.tokens)  # noqa: E731
        out = []
        for start in range(0, len(images), batch_size):
            pooled, grid = self._features(
                [self._image(im) for im in images[start : start + batch_size]]
            )
            with decoder_precision(self.quantize, self.device):
                results = decode(model, pooled, grid, options, self.trained.tokenizer)
            if reranking:  # neighbours by the first run's features
                first = pooled[0] if self.ensemble else pooled
                results = [hyps[:keep] for hyps in reranker.rerank(results, text, first.cpu())]
            out += [[self._caption(h) for h in hyps] for hyps in results]
        return out

    def _features(self, images: list[Image.Image]):
        """pooled [B, D] and grid [B, L, D]; an ensemble's: a list of each, one per member."""
        features = []
        for encoder, transform in zip(self.encoders, self._transforms):
            pixels = torch.stack([transform(im) for im in images]).to(self.device)
            with encoder_precision(self.quantize, self.device):
                pooled, grid = encoder(pixels)  # [B, D], [B, L, D]
            # int8 decoders take float32 (an exported encoder may give no grid)
            features.append((pooled.float(), None if grid is None else grid.float()))
        if not self.ensemble:
            return features[0]
        chosen = [features[i] for i in self._member_encoder]
        return [f[0] for f in chosen], [f[1] for f in chosen]

    def _caption(self, hyp: DecodingResult) -> Caption:
        text = detokenize(self.trained.tokenizer.decode(hyp.tokens))
        if hyp.attention is None:
            return Caption(text, hyp.score)
        tokens = [self.trained.tokenizer.decode([t]) for t in hyp.tokens]
        side = self._grid_side(len(hyp.attention[0]))
        maps = np.asarray(hyp.attention, dtype=np.float32)[: len(tokens)]  # [T, L]
        return Caption(text, hyp.score, tokens, maps.reshape(-1, side, side))

    def _grid_side(self, positions: int) -> int:
        side = round(positions**0.5)
        if side * side != positions:
            raise CaptionkitError(
                f"encoder {self._seen_encoder.name}: its grid of {positions} positions is not "
                "square, cannot draw attention maps"
            )
        return side

    def seen(self, image) -> np.ndarray:
        """The image as the encoder sees it (resized and cropped), uint8 [H, W, 3]: what
        attention maps are drawn over."""
        return self._unnormalize(self._seen_transform(self._image(image)))

    @torch.inference_mode()
    def attend(self, images: list, options: DecodingOptions | None = None) -> list[AttendedCaption]:
        """The best caption of each image with its per-token attention maps (attention models
        only; default options: `DecodingOptions()`)."""
        if not self.attends:
            name = self.trained.config["model"]["name"]
            raise CaptionkitError(
                f"model '{name}' has no attention over the image to show "
                "(train with --model attention)"
            )
        options = options or DecodingOptions()
        out = []
        for image, hyps in zip(images, self.caption(images, options=options, attention=True)):
            best = max(hyps, key=lambda h: h.score) if options.sample else hyps[0]
            out.append(AttendedCaption(best.tokens, best.attention, self.seen(image), best.score))
        return out

    def _unnormalize(self, pixels: torch.Tensor) -> np.ndarray:
        """Normalised pixels [3, H, W] -> the uint8 image [H, W, 3] they came from."""
        mean = torch.tensor(self._seen_encoder.data_config["mean"])[:, None, None]
        std = torch.tensor(self._seen_encoder.data_config["std"])[:, None, None]
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
