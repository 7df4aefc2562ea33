"""Training curves of a run folder as PNG line charts, drawn with Pillow (no plotting library):
the loss per step and per epoch, and val CIDEr and BLEU-4 per epoch."""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageDraw

from captionkit.reporting.pictures import font

COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e"]


@dataclass
class Series:
    """One line of a chart."""

    label: str
    xs: list[float]
    ys: list[float]
    markers: bool = False
    """Draw a dot at every point (few points, e.g. one per epoch)."""


@dataclass
class Chart:
    """A line chart's content."""

    title: str
    xlabel: str
    series: list[Series] = field(default_factory=list)


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """About `count` round tick values (1, 2 or 5 times a power of ten apart) covering the range."""
    if high <= low:
        high = low + (abs(low) or 1.0)
    raw = (high - low) / count
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = math.floor(low / step) * step
    ticks, value = [], first
    while value <= high + step * 1e-9:
        ticks.append(round(value, 10))
        value += step
    if ticks[-1] < high:
        ticks.append(round(value, 10))
    return ticks


def draw_chart(chart: Chart, width: int = 960, height: int = 600) -> Image.Image:
    """The chart as an image (drawn at twice the size it is shown, for sharp text)."""
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    small, large = font(height // 28), font(height // 22)
    left, right, top, bottom = width * 0.12, width * 0.97, height * 0.12, height * 0.84
    points = [(x, y) for s in chart.series for x, y in zip(s.xs, s.ys)]
    xt = nice_ticks(min(p[0] for p in points), max(p[0] for p in points))
    yt = nice_ticks(min(p[1] for p in points), max(p[1] for p in points))

    def at(x: float, y: float) -> tuple[float, float]:
        fx, fy = (x - xt[0]) / (xt[-1] - xt[0]), (y - yt[0]) / (yt[-1] - yt[0])
        return left + fx * (right - left), bottom - fy * (bottom - top)

    for y in yt:
        py = at(xt[0], y)[1]
        draw.line([(left, py), (right, py)], fill="#e4e4e4", width=2)
        draw.text((left - 10, py), f"{y:g}", fill="#333", font=small, anchor="rm")
    for x in xt:
        px = at(x, yt[0])[0]
        draw.line([(px, bottom), (px, bottom + 8)], fill="#333", width=2)
        draw.text((px, bottom + 12), f"{x:g}", fill="#333", font=small, anchor="mt")
    draw.rectangle([left, top, right, bottom], outline="#333", width=2)
    for i, s in enumerate(chart.series):
        color = COLORS[i % len(COLORS)]
        xy = [at(x, y) for x, y in zip(s.xs, s.ys)]
        if len(xy) > 1:
            draw.line(xy, fill=color, width=4, joint="curve")
        for px, py in xy if s.markers or len(xy) == 1 else []:
            draw.ellipse([px - 7, py - 7, px + 7, py + 7], fill=color)
        legend_y = top + 14 + i * (height // 18)
        draw.line([(right - 250, legend_y), (right - 200, legend_y)], fill=color, width=6)
        draw.text((right - 190, legend_y), s.label, fill="#222", font=small, anchor="lm")
    draw.text((width / 2, top / 2), chart.title, fill="#111", font=large, anchor="mm")
    draw.text(((left + right) / 2, height - 8), chart.xlabel, fill="#333", font=small, anchor="mb")
    return image


def read_validations(run_dir: Path) -> list[dict]:
    """The rows of a run's `metrics.jsonl` (one per validation); none if it has no such file."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def read_step_losses(run_dir: Path) -> tuple[list[float], list[float]]:
    """(steps, train losses) logged during training in Lightning's CSV logs (`logs/csv/`, or
    `logs/version_N/` in older runs); a step logged in several files (a resumed run logged it
    again) keeps its last value."""
    losses: dict[float, float] = {}
    for path in sorted(Path(run_dir).glob("logs/**/metrics.csv")):
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                if row.get("train/loss") and row.get("step"):
                    losses[float(row["step"])] = float(row["train/loss"])
    steps = sorted(losses)
    return steps, [losses[s] for s in steps]


def training_charts(run_dir: Path) -> list[Chart]:
    """The loss chart (per logged step, and the last value at each validation) and the
    validation chart (val CIDEr and BLEU-4 per epoch); a chart without data is left out."""
    rows = read_validations(run_dir)
    steps, losses = read_step_losses(run_dir)
    loss = Chart("training loss", "optimizer step")
    if steps:
        loss.series.append(Series("logged steps", steps, losses))
    epoch_rows = [r for r in rows if r.get("train/loss") is not None]
    if epoch_rows:
        loss.series.append(
            Series(
                "at validation",
                [r["step"] for r in epoch_rows],
                [r["train/loss"] for r in epoch_rows],
                markers=True,
            )
        )
    val = Chart("validation", "epoch")
    for key in ("val/CIDEr", "val/BLEU-4"):
        kept = [r for r in rows if r.get(key) is not None]
        if kept:
            val.series.append(
                Series(
                    key.split("/")[1],
                    [r["epoch"] for r in kept],
                    [r[key] for r in kept],
                    markers=True,
                )
            )
    return [chart for chart in (loss, val) if chart.series]
