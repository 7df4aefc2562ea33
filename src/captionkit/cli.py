"""The `captionkit` command: each subcommand is a thin function over the library.

`main(argv)` runs it from Python (tests use it); errors a user can cause print one line.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from captionkit.errors import CaptionkitError

app = typer.Typer(
    help="Train, evaluate and use image-captioning models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

DataOpt = Annotated[Path, typer.Option("--data", help="Dataset folder or annotation file.")]
ImagesOpt = Annotated[
    Path | None, typer.Option("--images", help="Image folder, if not beside the annotations.")
]
CheckpointOpt = Annotated[Path, typer.Option("--checkpoint", help="A run folder from `train`.")]
BeamOpt = Annotated[int, typer.Option("--beam-size", min=1, help="Beam size (1 = greedy).")]
CacheOpt = Annotated[
    Path | None, typer.Option("--cache-dir", help="Feature cache (default ~/.cache/captionkit).")
]


@app.command("make-shapes")
def make_shapes_cmd(
    out_dir: Annotated[Path, typer.Argument(help="Folder to write the dataset into.")],
    n_images: Annotated[int, typer.Option("--n-images", min=3)] = 2000,
    seed: Annotated[int, typer.Option("--seed")] = 0,
) -> None:
    """Generate the built-in `shapes` dataset (images + 5 captions each)."""
    from captionkit.data.shapes import make_shapes

    summary = make_shapes(out_dir, n_images=n_images, seed=seed)
    typer.echo(f"wrote {summary['images']} images, {summary['captions']} captions to {out_dir}")


@app.command()
def train(
    data: DataOpt,
    out: Annotated[Path, typer.Option("--out", help="Run folder to write.")],
    images: ImagesOpt = None,
    model: Annotated[str, typer.Option("--model", help="Registered model name.")] = "show_tell",
    epochs: Annotated[int, typer.Option("--epochs", min=1)] = 10,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = 64,
    lr: Annotated[float, typer.Option("--lr", help="Learning rate.")] = 5e-4,
    min_count: Annotated[int, typer.Option("--min-count", min=1)] = 5,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    encoder: Annotated[str, typer.Option("--encoder", help="timm model name.")] = (
        "tf_efficientnet_lite0"
    ),
    encoder_weights: Annotated[str, typer.Option("--encoder-weights")] = "default",
    cache_dir: CacheOpt = None,
) -> None:
    """Train a captioning model; the best checkpoint (val CIDEr) is saved in --out."""
    from captionkit.training import DataConfig, EncoderConfig, RunConfig
    from captionkit.training.train import train as run_training

    config = RunConfig(
        model=model,
        data=DataConfig(
            str(data),
            images and str(images),
            min_count=min_count,
            cache_dir=cache_dir and str(cache_dir),
        ),  # fmt: skip
        encoder=EncoderConfig(encoder, encoder_weights),
    )
    config.train.epochs, config.train.batch_size, config.train.seed = epochs, batch_size, seed
    config.optim.lr = lr
    best = run_training(config, out)
    typer.echo(f"best val CIDEr {best['val/CIDEr']:.3f} at epoch {best['epoch']}; saved to {out}")


@app.command()
def evaluate(
    checkpoint: CheckpointOpt,
    data: DataOpt,
    images: ImagesOpt = None,
    split: Annotated[str, typer.Option("--split")] = "test",
    beam_size: BeamOpt = 3,
    output: Annotated[Path | None, typer.Option("--output", help="Write metrics JSON.")] = None,
    cache_dir: CacheOpt = None,
) -> None:
    """Score a run on one split: BLEU-1..4, METEOR, ROUGE-L, CIDEr."""
    from captionkit.evaluation.evaluate import evaluate_run

    result = evaluate_run(checkpoint, data, images, split, beam_size, cache_dir and str(cache_dir))
    typer.echo(f"{split} split, {len(result.predictions)} images, beam {beam_size}")
    for name, value in result.metrics.items():
        typer.echo(f"  {name:<8} {value:.4f}")
    if output:
        output.write_text(json.dumps(result.metrics, indent=2) + "\n")


@app.command()
def caption(
    checkpoint: CheckpointOpt,
    images: Annotated[list[Path], typer.Argument(help="Image files.")],
    beam_size: BeamOpt = 3,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON lines.")] = False,
) -> None:
    """Caption image files with a trained run."""
    from captionkit.serving import Captioner

    captioner = Captioner.load(checkpoint)
    for path, hyps in zip(images, captioner.caption(images, beam_size=beam_size)):
        best = hyps[0]
        if as_json:
            line = {"image": str(path), "caption": best.text, "score": round(best.score, 4)}
            typer.echo(json.dumps(line))
        else:
            typer.echo(f"{path}: {best.text}")


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit code instead of exiting."""
    command = typer.main.get_command(app)
    try:
        # Standalone mode prints usage errors itself and exits; our errors pass through it.
        command.main(args=argv, prog_name="captionkit", standalone_mode=True)
    except CaptionkitError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    return 0


def entry_point() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry_point()
