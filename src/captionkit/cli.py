"""The `captionkit` command: each subcommand is a thin function over the library.

`main(argv)` runs it from Python (tests use it); errors a user can cause print one line.
"""

from __future__ import annotations

import inspect
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

from captionkit import cli_options as opts
from captionkit.cli_options import GroupedCommand, with_decoding_options, with_model_options
from captionkit.cli_train import (
    TrainCommand,
    run_config,
    with_config_fields,
    with_rerank_options,
    with_serve_settings,
)
from captionkit.errors import CaptionkitError

app = typer.Typer(
    help="Train, evaluate and use image-captioning models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _prose(doc: str) -> str:
    """A docstring as command help: each paragraph on one line, for --help to wrap to the
    terminal (Typer keeps a docstring's line breaks); the first paragraph is the command's
    summary in `captionkit --help`."""
    return "\n\n".join(" ".join(p.split()) for p in inspect.cleandoc(doc).split("\n\n"))


def command(name: str | None = None, cls: type[GroupedCommand] = GroupedCommand) -> Callable:
    """`app.command` for a function whose docstring is its help, a one-line summary first; its
    option groups are made on first use (`GroupedCommand`)."""

    def register(function: Callable) -> Callable:
        return app.command(name, cls=cls, help=_prose(function.__doc__ or ""))(function)

    return register


DataOpt = Annotated[Path, typer.Option("--data", help="Dataset folder or annotation file.")]
ImagesOpt = Annotated[
    Path | None, typer.Option("--images", help="Image folder, if not beside the annotations.")
]
CheckpointOpt = Annotated[Path, typer.Option("--checkpoint", help="A run folder from `train`.")]
CheckpointsOpt = Annotated[
    list[Path],
    typer.Option("--checkpoint", help="A run folder from `train`; repeated: an ensemble of the "
                 "runs (they must share the tokenizer; each keeps its own encoder)."),
]  # fmt: skip


def _runs(checkpoints: list[Path]) -> Path | list[Path]:
    """One run folder, or the list of an ensemble's."""
    return checkpoints[0] if len(checkpoints) == 1 else checkpoints


CacheOpt = Annotated[
    Path | None,
    typer.Option(
        "--cache-dir", help="Feature cache (default `$CAPTIONKIT_CACHE` or `~/.cache/captionkit`)."
    ),
]


@command("make-shapes")
def make_shapes_cmd(
    out_dir: Annotated[Path, typer.Argument(help="Folder to write the dataset into.")],
    n_images: Annotated[int, typer.Option("--n-images", min=3)] = 2000,
    seed: Annotated[int, typer.Option("--seed")] = 0,
) -> None:
    """Generate the built-in `shapes` dataset.

    Pictures of coloured shapes, each with 5 captions of what is where."""
    from captionkit.data.shapes import make_shapes

    summary = make_shapes(out_dir, n_images=n_images, seed=seed)
    typer.echo(f"wrote {summary['images']} images, {summary['captions']} captions to {out_dir}")


@command()
def encoders(
    all_timm: Annotated[bool, typer.Option("--all", help="Every timm model with weights.")] = False,
) -> None:
    """List image encoders and where their weights come from."""
    from captionkit.encoders.factory import list_encoders

    for entry in list_encoders(all_timm):
        typer.echo(f"{entry['name']:<28} {entry['weights']}")


@command()  # + --encoder, --encoder-weights, --resize: EncoderConfig's fields, as train's
@with_config_fields("encoder_config", "encoder", ("name", "weights", "resize"))
def extract(
    data: DataOpt,
    images: ImagesOpt = None,
    grid: Annotated[bool, typer.Option("--grid/--no-grid", help="Also store the grid.")] = True,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = 32,
    workers: Annotated[int, typer.Option("--workers", min=0, help="Decoding processes.")] = 1,
    cache_dir: CacheOpt = None,
    device: opts.ExtractDeviceOpt = "auto",
    amp: opts.AmpOpt = "none",
    verify: opts.VerifyOpt = False,
    encoder_config=None,  # EncoderConfig from --encoder, --encoder-weights, --resize
) -> None:
    """Cache the encoder features of every image of a dataset.

    Images unchanged since an earlier extraction with the same encoder are copied from its store,
    not extracted again. A truncated store, or one of another captionkit version, is built again.
    Launched by torchrun or SLURM, the processes share the images (one GPU each)."""
    from captionkit.data import load_dataset
    from captionkit.encoders.factory import create_encoder
    from captionkit.encoders.sharded import extract_sharded

    dataset = load_dataset(data, images)
    e = encoder_config
    model = create_encoder(e.name, e.weights, e.resize)
    paths = [dataset.path(r) for r in dataset.records]
    # Under torchrun or SLURM, every process extracts its share (encoders.sharded).
    store = extract_sharded(
        model,
        paths,
        cache_dir,
        grid,
        device,
        batch_size=batch_size,
        num_workers=workers,
        amp=None if amp == "none" else amp,
    )
    typer.echo(f"{len(paths) - len(store.failed)} images -> {store.folder}")
    typer.echo(store.report.summary() if store.report else "all images were already cached")
    if verify:
        from captionkit.encoders.verify import verify_store

        report = verify_store(
            store, model, batch_size=batch_size, num_workers=workers, device=device
        )
        typer.echo(report.summary())
    if store.failed:
        typer.echo(f"{len(store.failed)} images could not be read (listed in index.json)")


@command()  # + --min-count, --max-length: DataConfig's fields, as train's
@with_config_fields("data_config", "data", ("min_count", "max_length"))
def prepare(
    data: Annotated[Path, typer.Argument(help="Dataset folder or annotation file.")],
    images: ImagesOpt = None,
    quick: Annotated[bool, typer.Option("--quick", help="Do not decode the images.")] = False,
    strict: Annotated[bool, typer.Option("--strict", help="Stop at the first problem.")] = False,
    output: Annotated[Path | None, typer.Option("--output", help="Write the report JSON.")] = None,
    data_config=None,  # DataConfig from --min-count, --max-length
) -> None:
    """Check a dataset without training.

    Its counts, splits and vocabulary (as `train` would build it), and every problem found."""
    from captionkit.data.dataset_report import format_report, prepare_report

    report = prepare_report(
        data, images, data_config.min_count, data_config.max_length, strict, check_images=not quick
    )
    typer.echo(format_report(report))
    if output:
        output.write_text(json.dumps(report, indent=2) + "\n")


@command(cls=TrainCommand)  # + an option per config field: --data, --epochs, ... (cli_train)
@with_model_options
def train(
    ctx: typer.Context,
    out: Annotated[Path | None, typer.Option("--out", help="Run folder to write.")] = None,
    resume: Annotated[
        Path | None,
        typer.Option(
            "--resume",
            help="Continue the run in this folder from its checkpoints/last.safetensors "
            "(its config.yaml; options given here, e.g. --epochs, override it).",
        ),
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config", help="YAML run config (see configs/); options given here override it."
        ),
    ] = None,
    preset: Annotated[
        str | None, typer.Option("--preset", help="Recipe when no --config (cli_train says more).")
    ] = None,
    model_args: Callable | None = None,  # from --rnn, ..., --model-arg (cli_options)
) -> None:
    """Train a captioning model.

    The best checkpoint (val CIDEr) is saved in --out, with the resolved config as config.yaml (a
    --config file for the same run). With no --config, the --preset recipe, which options given
    here override."""
    from captionkit.models.run_folder import kept_label
    from captionkit.training.train import train as run_training

    if resume is not None:
        if config is not None or out is not None:
            raise CaptionkitError(
                "--resume uses the run's own config.yaml and folder: "
                "give neither --config nor --out"
            )
        config, out = resume / "config.yaml", resume
        if not config.exists():
            raise CaptionkitError(f"--resume {resume}: not a run folder (no config.yaml)")
    elif out is None:
        ctx.fail("Missing option '--out' (or --resume RUN_DIR).")
    best = run_training(run_config(ctx, config, model_args, preset), out, resume=resume is not None)
    if best:  # DDP: every process returns here, with the same best row
        typer.echo(f"{kept_label(best)}: {best['val/CIDEr']:.3f}; saved to {out}")


@command()
@with_decoding_options()
@with_rerank_options()
def evaluate(
    checkpoint: CheckpointsOpt,
    data: DataOpt,
    images: ImagesOpt = None,
    split: Annotated[str, typer.Option("--split")] = "test",
    output: Annotated[Path | None, typer.Option("--output", help="Write metrics JSON.")] = None,
    report: Annotated[
        Path | None,
        typer.Option("--report", help="Write an HTML report: metrics, curves, images, attention."),
    ] = None,
    cache_dir: CacheOpt = None,
    spice: Annotated[
        bool, typer.Option("--spice", help="Also SPICE (needs Java 8/11 and Stanford CoreNLP).")
    ] = False,
    quantize: opts.QuantizeOpt = "none",
    decoding=None,  # DecodingOptions from --beam-size, --sample, ... (cli_options)
    rerank=None,  # RerankOptions from --rerank, ... (cli_train)
) -> None:
    """Score a run on one split.

    BLEU-1..4, METEOR, ROUGE-L, CIDEr (SPICE with --spice), mean caption length, vocabulary used,
    % novel captions; --output adds each image's CIDEr. The metrics are also kept in the run
    folder as eval_SPLIT.json, for `captionkit compare` (not those of an ensemble: several
    --checkpoint)."""
    from captionkit.evaluation.evaluate import evaluate_run
    from captionkit.reporting.compare import save_run_evaluation

    runs = _runs(checkpoint)
    result = evaluate_run(
        runs,
        data,
        images,
        split,
        cache_dir=cache_dir and str(cache_dir),
        options=decoding,
        spice=spice,
        rerank=rerank,
        quantize=quantize,
    )
    for note in result.notes:
        typer.echo(f"note: {note}", err=True)
    described = result.rerank.describe_decoding(decoding)  # what ran: the widened beam too
    if isinstance(runs, list):
        described += f", ensemble of {len(runs)} runs"
    if quantize != "none":
        described += f", quantized {quantize}"
    typer.echo(f"{split} split, {len(result.predictions)} images, {described}")
    for name, value in result.metrics.items():
        typer.echo(f"  {name:<8} {value:.4f}")
    stats = result.stats
    line = f"  length {stats['length_mean']:.1f} words, vocabulary {stats['vocabulary']:.0f} words"
    if "novel_percent" in stats:
        line += f", novel {stats['novel_percent']:.1f}%"
    typer.echo(line)
    if output:
        output.write_text(json.dumps(result.to_json(), indent=2) + "\n")
    if not isinstance(runs, list):  # an ensemble's metrics belong to no one run folder
        try:  # for `captionkit compare`; a read-only run folder only loses that
            save_run_evaluation(
                runs, split, result.metrics, len(result.predictions), described, data
            )
        except OSError as e:
            typer.echo(f"warning: could not keep the metrics in the run folder ({e})", err=True)
    if report:
        from captionkit.reporting.report import write_report

        written = write_report(report, runs, result, split, decoding, described=described)
        typer.echo(f"report: {written}")


@command()
@with_decoding_options(n_best=True, bad_endings=True)
@with_rerank_options()
def caption(
    checkpoint: CheckpointsOpt,
    images: Annotated[list[Path], typer.Argument(help="Image files.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON lines.")] = False,
    attention_map: Annotated[
        Path | None,
        typer.Option(
            "--attention-map",
            help="Attention models: write a PNG of where the model "
            "looked for each word (one image only).",
        ),
    ] = None,
    quantize: opts.QuantizeOpt = "none",
    decoding=None,  # DecodingOptions from --beam-size, --sample, ... (cli_options)
    rerank=None,  # RerankOptions from --rerank, ... (cli_train)
) -> None:
    """Caption image files with a trained run.

    The best caption, or with --n-best or --num-samples several, each with its log-probability."""
    from captionkit.serving import Captioner

    if attention_map and len(images) != 1:
        raise CaptionkitError(f"--attention-map takes one image, not {len(images)}")
    captioner = Captioner.load(_runs(checkpoint), rerank=rerank, quantize=quantize)
    if attention_map:
        from captionkit.reporting.pictures import attention_strip

        (attended,) = captioner.attend(images, decoding)
        strip = attention_strip(attended.image, attended.tokens, attended.attention)
        strip.save(attention_map)
        typer.echo(f"{images[0]}: {' '.join(attended.tokens)} -> {attention_map}")
        return
    for path, hyps in zip(images, captioner.caption(images, options=decoding)):
        if as_json:
            scored = [{"caption": h.text, "score": round(h.score, 4)} for h in hyps]
            typer.echo(json.dumps({"image": str(path), **scored[0], "captions": scored}))
        elif len(hyps) == 1:
            typer.echo(f"{path}: {hyps[0].text}  ({hyps[0].score:.2f})")
        else:
            typer.echo(f"{path}:")
            for rank, h in enumerate(hyps, 1):
                typer.echo(f"  {rank}. {h.text}  ({h.score:.2f})")


@command()
def compare(
    runs: Annotated[list[Path], typer.Argument(help="Run folders (evaluated with `evaluate`).")],
    split: Annotated[str, typer.Option("--split", help="Whose metrics to compare.")] = "test",
    output: Annotated[
        Path | None, typer.Option("--output", help="Also write the table: .md, .csv or .json.")
    ] = None,
) -> None:
    """Compare runs' metrics and the settings they differ in.

    One table, the best run first."""
    from captionkit.reporting import compare as cmp

    fmt = cmp.table_format(output) if output else "md"
    summaries = [cmp.summarize_run(run, split) for run in runs]
    columns, rows = cmp.comparison_table(summaries)
    typer.echo(cmp.format_table(columns, rows), nl=False)
    for s in summaries:
        if s.evaluation is None:
            name = cmp.eval_file(s.run, split).name
            typer.echo(f"note: {s.run} has no {name}: evaluate it with `captionkit evaluate`")
    if output:
        output.write_text(cmp.format_table(columns, rows, fmt))


@command()  # + --max-upload-mb, --max-files, --batch-size...: ServeSettings' fields (cli_train)
@with_serve_settings()
@with_rerank_options()
def serve(
    checkpoint: CheckpointsOpt,
    host: opts.HostOpt = "127.0.0.1",
    port: opts.PortOpt = 8000,
    device: opts.ServeDeviceOpt = "cpu",
    allow_unk: Annotated[
        bool, typer.Option("--allow-unk", help="Let captions contain <unk>.")
    ] = False,
    bad_endings: Annotated[
        bool,
        typer.Option(
            "--bad-endings/--no-bad-endings",
            help="Never end a caption on an article, preposition or conjunction.",
        ),
    ] = True,
    api_key: opts.ApiKeyOpt = None,
    quantize: opts.QuantizeOpt = "none",
    rerank=None,  # RerankOptions from --rerank, ... (cli_train): the requests' default
    settings=None,  # ServeSettings from --max-upload-mb, --batch-size, ... (cli_train)
) -> None:
    """Serve a run over HTTP.

    POST /caption, GET /health, GET /model, a web page at /, and the OpenAPI docs at /docs.
    Concurrent requests are captioned together (micro-batching)."""
    from captionkit.decoding import DecodingOptions
    from captionkit.serving.server import serve as run_server

    options = DecodingOptions(allow_unk=allow_unk, bad_endings=bad_endings)
    if api_key is not None and not api_key.strip():
        raise CaptionkitError("--api-key: the key is empty")
    run_server(
        _runs(checkpoint),
        host,
        port,
        settings,
        device,
        options,
        rerank,
        api_key=api_key,
        quantize=quantize,
    )


@command()
def export(
    checkpoint: CheckpointOpt,
    fmt: Annotated[str, typer.Option("--format", help="onnx | torchscript.")] = "onnx",
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            help="Files to write: OUT.encoder.onnx, OUT.step.onnx (or "
            "OUT.pt) and the manifest OUT.json.",
        ),
    ] = Path("model.onnx"),
    quantize: Annotated[
        str, typer.Option("--quantize", help="none | int8 (ONNX: matrix products in int8).")
    ] = "none",
) -> None:
    """Export a run as ONNX or TorchScript graphs.

    The encoder (pixels -> decoder state) and the decoder step, for
    `captionkit.serving.exported_captioner.load_exported` or other runtimes."""
    from captionkit.serving.export import export_run

    for path in export_run(checkpoint, fmt, out, quantize):
        typer.echo(f"wrote {path}")


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit code instead of exiting."""
    command = typer.main.get_command(app)
    try:
        # Standalone mode prints usage errors itself and exits; our errors pass through it.
        command.main(args=argv, prog_name="captionkit", standalone_mode=True)
    except CaptionkitError as e:
        print(f"error: {e}", file=sys.stderr)
        return getattr(e, "exit_code", 1)  # a pre-empted run's: 128 + the signal
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    return 0


def entry_point() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry_point()
