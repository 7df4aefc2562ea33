"""The `captionkit` command: each subcommand is a thin function over the library.

`main(argv)` runs it from Python (tests use it); errors a user can cause print one line.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

from captionkit import cli_options as opts
from captionkit.cli_options import with_decoding_options, with_model_options, with_rerank_options
from captionkit.cli_train import TrainCommand, run_config
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
CheckpointsOpt = Annotated[
    list[Path],
    typer.Option("--checkpoint", help="A run folder from `train`; repeated: an ensemble of the "
                 "runs (they must share the tokenizer; each keeps its own encoder)."),
]  # fmt: skip


def _runs(checkpoints: list[Path]) -> Path | list[Path]:
    """One run folder, or the list of an ensemble's."""
    return checkpoints[0] if len(checkpoints) == 1 else checkpoints


EncoderOpt = Annotated[str, typer.Option("--encoder", help="timm model name (see `encoders`).")]
EncoderWeightsOpt = Annotated[
    str, typer.Option("--encoder-weights", help="default | hub | none | PATH to a weights file.")
]
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
def encoders(
    all_timm: Annotated[bool, typer.Option("--all", help="Every timm model with weights.")] = False,
) -> None:
    """List image encoders and where their pretrained weights come from."""
    from captionkit.encoders.factory import list_encoders

    for entry in list_encoders(all_timm):
        typer.echo(f"{entry['name']:<28} {entry['weights']}")


@app.command()
def extract(
    data: DataOpt,
    images: ImagesOpt = None,
    encoder: EncoderOpt = "tf_efficientnet_lite0",
    encoder_weights: EncoderWeightsOpt = "default",
    resize: opts.ResizeOpt = None,
    grid: Annotated[bool, typer.Option("--grid/--no-grid", help="Also store the grid.")] = True,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = 32,
    workers: Annotated[int, typer.Option("--workers", min=0, help="Decoding processes.")] = 1,
    cache_dir: CacheOpt = None,
    device: opts.ExtractDeviceOpt = "auto",
    amp: opts.AmpOpt = "none",
    verify: opts.VerifyOpt = False,
) -> None:
    """Extract and cache encoder features for every image of a dataset; images unchanged since an
    earlier extraction with the same encoder are copied from its store, not extracted again. A
    truncated store, or one of another captionkit version, is built again. Launched by torchrun
    or SLURM, the processes share the images (one GPU each)."""
    from captionkit.data import load_dataset
    from captionkit.encoders.factory import DEFAULT_RESIZE, create_encoder
    from captionkit.encoders.sharded import extract_sharded

    dataset = load_dataset(data, images)
    model = create_encoder(encoder, encoder_weights, resize or DEFAULT_RESIZE)
    paths = [dataset.path(r) for r in dataset.records]
    # Under torchrun or SLURM, every process extracts its share (encoders.sharded).
    store = extract_sharded(model, paths, cache_dir, grid, device, batch_size=batch_size,
                            num_workers=workers, amp=None if amp == "none" else amp)  # fmt: skip
    typer.echo(f"{len(paths) - len(store.failed)} images -> {store.folder}")
    typer.echo(store.report.summary() if store.report else "all images were already cached")
    if verify:
        from captionkit.encoders.verify import verify_store

        report = verify_store(store, model, batch_size=batch_size, num_workers=workers,
                              device=device)  # fmt: skip
        typer.echo(report.summary())
    if store.failed:
        typer.echo(f"{len(store.failed)} images could not be read (listed in index.json)")


@app.command()
def prepare(
    data: Annotated[Path, typer.Argument(help="Dataset folder or annotation file.")],
    images: ImagesOpt = None,
    min_count: Annotated[int, typer.Option("--min-count", min=1)] = 5,
    max_length: Annotated[int, typer.Option("--max-length", min=1)] = 20,
    quick: Annotated[bool, typer.Option("--quick", help="Do not decode the images.")] = False,
    strict: Annotated[bool, typer.Option("--strict", help="Stop at the first problem.")] = False,
    output: Annotated[Path | None, typer.Option("--output", help="Write the report JSON.")] = None,
) -> None:
    """Validate a dataset without training: counts, splits, vocabulary, problems."""
    from captionkit.data.dataset_report import format_report, prepare_report

    report = prepare_report(data, images, min_count, max_length, strict, check_images=not quick)
    typer.echo(format_report(report))
    if output:
        output.write_text(json.dumps(report, indent=2) + "\n")


@app.command(cls=TrainCommand)  # + an option per config field: --data, --epochs, ... (cli_train)
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
        str | None,
        typer.Option(
            "--preset",
            help="Recipe when no --config: best (the default: the best recipe of BENCHMARKS.md), "
            "fast (a quick Show-and-Tell) or none (the config defaults).",
        ),
    ] = None,
    model_args: Callable | None = None,  # from --rnn, ..., --model-arg (cli_options)
) -> None:
    """Train a captioning model; the best checkpoint (val CIDEr) is saved in --out, with the
    resolved config as config.yaml (a --config file for the same run). With no --config, the
    --preset recipe (default: best), which options given here override."""
    from captionkit.models.run_folder import kept_label
    from captionkit.training.train import train as run_training

    if resume is not None:
        if config is not None or out is not None:
            raise CaptionkitError("--resume uses the run's own config.yaml and folder: "
                                  "give neither --config nor --out")  # fmt: skip
        config, out = resume / "config.yaml", resume
        if not config.exists():
            raise CaptionkitError(f"--resume {resume}: not a run folder (no config.yaml)")
    elif out is None:
        ctx.fail("Missing option '--out' (or --resume RUN_DIR).")
    best = run_training(run_config(ctx, config, model_args, preset), out, resume=resume is not None)
    if best:  # DDP: every process returns here, with the same best row
        typer.echo(f"{kept_label(best)}: {best['val/CIDEr']:.3f}; saved to {out}")


@app.command()
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
    decoding=None,  # DecodingOptions from --beam-size, --sample, ... (cli_options)
    rerank=None,  # RerankOptions from --rerank, ... (cli_options)
) -> None:
    """Score a run on one split: BLEU-1..4, METEOR, ROUGE-L, CIDEr (SPICE with --spice), mean
    caption length, vocabulary used, % novel captions; --output adds each image's CIDEr. The
    metrics are also kept in the run folder as eval_SPLIT.json, for `captionkit compare` (not
    those of an ensemble: several --checkpoint)."""
    from captionkit.evaluation.evaluate import evaluate_run
    from captionkit.reporting.compare import save_run_evaluation

    runs = _runs(checkpoint)
    result = evaluate_run(runs, data, images, split, cache_dir=cache_dir and str(cache_dir),
                          options=decoding, spice=spice, rerank=rerank)  # fmt: skip
    for note in result.notes:
        typer.echo(f"note: {note}", err=True)
    reranked = result.rerank
    described = decoding.describe() + (f", rerank {reranked.describe()}" if reranked.active else "")
    if isinstance(runs, list):
        described += f", ensemble of {len(runs)} runs"
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
            save_run_evaluation(runs, split, result.metrics, len(result.predictions),
                                described, data)  # fmt: skip
        except OSError as e:
            typer.echo(f"warning: could not keep the metrics in the run folder ({e})", err=True)
    if report:
        from captionkit.reporting.report import write_report

        written = write_report(report, runs, result, split, decoding, described=described)
        typer.echo(f"report: {written}")


@app.command()
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
    decoding=None,  # DecodingOptions from --beam-size, --sample, ... (cli_options)
    rerank=None,  # RerankOptions from --rerank, ... (cli_options)
) -> None:
    """Caption image files with a trained run: the best caption, or with --n-best or
    --num-samples several, each with its log-probability."""
    from captionkit.serving import Captioner

    if attention_map and len(images) != 1:
        raise CaptionkitError(f"--attention-map takes one image, not {len(images)}")
    captioner = Captioner.load(_runs(checkpoint), rerank=rerank)
    if attention_map:
        from captionkit.reporting.images import attention_strip

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


@app.command()
def compare(
    runs: Annotated[list[Path], typer.Argument(help="Run folders (evaluated with `evaluate`).")],
    split: Annotated[str, typer.Option("--split", help="Whose metrics to compare.")] = "test",
    output: Annotated[
        Path | None, typer.Option("--output", help="Also write the table: .md, .csv or .json.")
    ] = None,
) -> None:
    """One table of several runs' metrics and the settings they differ in, best first."""
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


@app.command()
@with_rerank_options()
def serve(
    checkpoint: CheckpointsOpt,
    host: opts.HostOpt = "127.0.0.1",
    port: opts.PortOpt = 8000,
    device: opts.ServeDeviceOpt = "cpu",
    batch_size: opts.ServeBatchOpt = 32,
    max_wait_ms: opts.MaxWaitOpt = 10.0,
    max_upload_mb: opts.MaxUploadOpt = 10.0,
    max_files: opts.MaxFilesOpt = 16,
    request_timeout: opts.RequestTimeoutOpt = 120.0,
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
    rerank=None,  # RerankOptions from --rerank, ... (cli_options): the requests' default
) -> None:
    """Serve a run over HTTP: POST /caption, GET /health, GET /model, a web page at /, and
    the OpenAPI docs at /docs. Concurrent requests are captioned together (micro-batching)."""
    from captionkit.decoding import DecodingOptions
    from captionkit.serving.server import serve as run_server
    from captionkit.serving.settings import ServeSettings

    settings = ServeSettings(max_upload_bytes=int(max_upload_mb * 1024 * 1024),
                             max_files=max_files, batch_size=batch_size, max_wait_ms=max_wait_ms,
                             request_timeout_s=request_timeout)  # fmt: skip
    options = DecodingOptions(allow_unk=allow_unk, bad_endings=bad_endings)
    if api_key is not None and not api_key.strip():
        raise CaptionkitError("--api-key: the key is empty")
    run_server(_runs(checkpoint), host, port, settings, device, options, rerank, api_key=api_key)


@app.command()
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
) -> None:
    """Export a run's encoder (pixels -> decoder state) and decoder step as ONNX or TorchScript
    graphs, for `captionkit.serving.exported.load_exported` or other runtimes."""
    from captionkit.serving.export import export_run

    for path in export_run(checkpoint, fmt, out):
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
