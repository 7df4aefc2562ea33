"""`captionkit evaluate --report`: one self-contained HTML page about a run on one split.

The page holds the metrics, the training curves, the best and worst captioned images by
per-image CIDEr-D, attention heat maps (attention models) and a grid of the split's images, each
with its generated caption, references and CIDEr-D. Images are embedded as base64 JPEG
thumbnails, the curves as PNG, the style inline: the file can be mailed or archived alone.
"""

from __future__ import annotations

import datetime
import html
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from captionkit.data.ptb_tokenizer import detokenize, tokenize
from captionkit.decoding import DecodingOptions
from captionkit.evaluation.captioner import Captioner
from captionkit.evaluation.evaluate import Evaluation
from captionkit.metrics.cider_d import CiderD
from captionkit.models.run_folder import kept_label, read_config
from captionkit.reporting import pictures
from captionkit.reporting.plots import draw_chart, training_charts
from captionkit.reporting.style import CSS


@dataclass
class ReportSettings:
    """What a report shows."""

    max_images: int = 100
    """Images in the grid of the whole split (the first by file name)."""
    extremes: int = 10
    """Images in each of the best and the worst lists."""
    attention_images: int = 4
    """Attention models: the best and the worst this many images get per-word heat maps."""
    thumb_size: int = 224
    """Longest side of the thumbnails, in pixels."""
    heat_size: int = 112
    """Side of each attention heat map, in pixels."""


def per_image_cider(evaluation: Evaluation) -> dict[str, float]:
    """CIDEr-D of every image's caption, document frequencies from the split's references (so
    the mean is the split's CIDEr-D, with captionkit's Python port of the PTB tokenizer)."""
    refs = {k: [" ".join(tokenize(c)) for c in v] for k, v in evaluation.references.items()}
    preds = {k: " ".join(tokenize(v)) for k, v in evaluation.predictions.items()}
    _, scores = CiderD(refs).corpus_score(preds)
    return {k: float(s) for k, s in zip(preds, scores)}


class _Thumbnails:
    """Thumbnail data URIs by image name, each image read once for all sections."""

    def __init__(self, paths: dict[str, Path], size: int):
        self.paths, self.size, self.cache = paths, size, {}

    def img(self, name: str) -> str:
        if name not in self.cache:
            try:
                uri = pictures.data_uri(pictures.thumbnail(self.paths[name], self.size))
                self.cache[name] = f'<img src="{uri}" alt="{_e(name)}" loading="eager">'
            except (KeyError, OSError, ValueError):
                self.cache[name] = f'<div class="missing">image not readable: {_e(name)}</div>'
        return self.cache[name]


def _e(text) -> str:
    return html.escape(str(text), quote=True)


def _card(name: str, evaluation: Evaluation, score: float, thumbs: _Thumbnails) -> str:
    refs = "".join(f"<li>{_e(r)}</li>" for r in evaluation.references[name])
    caption = detokenize(evaluation.predictions[name]) or "(empty caption)"
    return (
        f'<figure class="card">{thumbs.img(name)}<figcaption>'
        f'<p class="name"><span class="file" title="{_e(name)}">{_e(name)}</span>'
        f'<span class="score">CIDEr-D {score:.3f}</span></p>'
        f'<p class="gen">{_e(caption)}</p><ol class="refs">{refs}</ol>'
        "</figcaption></figure>"
    )


def _grid(names: list[str], evaluation, scores, thumbs) -> str:
    cards = "".join(_card(n, evaluation, scores[n], thumbs) for n in names)
    return f'<div class="grid">{cards}</div>'


def _metrics_table(evaluation: Evaluation, config: dict, mean_cider: float) -> str:
    rows = "".join(
        f"<tr><th>{_e(k)}</th><td>{v:.4f}</td></tr>" for k, v in evaluation.metrics.items()
    )
    rows += f"<tr><th>CIDEr-D, mean per image</th><td>{mean_cider:.4f}</td></tr>"
    best = config.get("metrics", {})
    if "val/CIDEr" in best:
        rows += f"<tr><th>{_e(kept_label(best))}</th><td>{best['val/CIDEr']:.4f}</td></tr>"
    return f'<table class="metrics">{rows}</table>'


def _curves(run_dir: Path) -> str:
    charts = training_charts(run_dir)
    if not charts:
        return '<p class="note">No training logs in the run folder (metrics.jsonl).</p>'
    imgs = "".join(
        f'<img class="chart" src="{pictures.data_uri(draw_chart(c), "PNG")}" alt="{_e(c.title)}">'
        for c in charts
    )
    return f'<div class="charts">{imgs}</div>'


def _attention_rows(
    run_dir: Path | list[Path],
    evaluation: Evaluation,
    names: list[str],
    decoding: DecodingOptions,
    size: int,
) -> str:
    """Per-token heat maps of `names` (empty for models without attention)."""
    if not names:
        return ""
    captioner = Captioner.load(run_dir)
    if not captioner.attends:
        return ""
    rows = []
    for name, attended in zip(
        names, captioner.attend([evaluation.images[n] for n in names], decoding)
    ):
        seen = Image.fromarray(attended.image).resize((size, size), Image.Resampling.BILINEAR)
        tiles = [(seen, "(image)")] + [
            (pictures.heat_overlay(attended.image, a, size), t)
            for t, a in zip(attended.tokens, attended.attention)
        ]
        figures = "".join(
            f'<figure class="heat"><img src="{pictures.data_uri(im)}" '
            f'alt="{_e(t)}"><figcaption>{_e(t)}</figcaption></figure>'
            for im, t in tiles
        )
        rows.append(
            f'<div class="heatrow"><p class="name">{_e(name)}</p>'
            f'<div class="heats">{figures}</div></div>'
        )
    return "".join(rows)


def build_report(
    run_dir: str | Path | list,
    evaluation: Evaluation,
    split: str,
    decoding: DecodingOptions,
    settings: ReportSettings | None = None,
    described: str | None = None,
) -> str:
    """The report page as HTML text. `run_dir`: a run folder, or a list of them (an ensemble:
    its members' models and training curves, attention maps of the ensemble). `described`: how
    the captions were made, when there is more to say than `decoding` (e.g. re-ranking)."""
    s = settings or ReportSettings()
    runs = [Path(r) for r in run_dir] if isinstance(run_dir, list) else [Path(run_dir)]
    configs = [read_config(r) for r in runs]
    scores = per_image_cider(evaluation)
    ranked = sorted(scores, key=lambda n: (-scores[n], n))
    thumbs = _Thumbnails(evaluation.images, s.thumb_size)
    k, a = min(s.extremes, len(ranked)), min(s.attention_images, len(ranked) // 2)
    best, worst = ranked[:k], ranked[::-1][:k]
    loaded = runs if len(runs) > 1 else runs[0]
    attention = _attention_rows(loaded, evaluation, best[:a] + worst[:a], decoding, s.heat_size)
    shown = sorted(scores)[: s.max_images]
    model = ", ".join(dict.fromkeys(c.get("model", {}).get("name", "?") for c in configs))
    encoder = ", ".join(dict.fromkeys(c.get("encoder", {}).get("name", "?") for c in configs))
    mean = sum(scores.values()) / len(scores)
    title = runs[0].name if len(runs) == 1 else f"ensemble of {len(runs)} runs"
    members = (
        ""
        if len(runs) == 1
        else (f'<p class="sub">runs: {", ".join(_e(str(r)) for r in runs)}</p>')
    )
    parts = [
        f"<h1>{_e(title)}</h1>{members}",
        f'<p class="sub">model <b>{_e(model)}</b>, encoder {_e(encoder)}; {_e(split)} split, '
        f"{len(scores)} images, decoding: {_e(described or decoding.describe())}; "
        f"{_e(datetime.datetime.now().strftime('%Y-%m-%d %H:%M'))}</p>",
        "<h2>Metrics</h2>",
        _metrics_table(evaluation, configs[0] if len(runs) == 1 else {}, mean),
        "<h2>Training curves</h2>",
        *(_curves(r) if len(runs) == 1 else f"<h3>{_e(r.name)}</h3>{_curves(r)}" for r in runs),
        f"<h2>Best {k} by CIDEr-D</h2>",
        _grid(best, evaluation, scores, thumbs),
        f"<h2>Worst {k} by CIDEr-D</h2>",
        _grid(worst, evaluation, scores, thumbs),
    ]
    if attention:
        parts += [
            "<h2>Where the model looked</h2>",
            f'<p class="note">Attention over the image for each generated word: the best '
            f"{a} and the worst {a} images above, as the encoder saw them (resized and cropped); "
            "bright = attended.</p>",
            attention,
        ]
    parts += [
        f"<h2>All images ({len(shown)} of {len(scores)})</h2>",
        _grid(shown, evaluation, scores, thumbs),
    ]
    body = "\n".join(parts)
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(title)}: captionkit report</title><style>{CSS}</style></head>"
        f"<body>\n{body}\n</body></html>\n"
    )


def write_report(
    path: str | Path,
    run_dir: str | Path | list,
    evaluation: Evaluation,
    split: str,
    decoding: DecodingOptions,
    settings: ReportSettings | None = None,
    described: str | None = None,
) -> Path:
    """Write the report page to `path` (see `build_report`); returns it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    page = build_report(run_dir, evaluation, split, decoding, settings, described)
    path.write_text(page, encoding="utf-8")
    return path
