"""Benchmark: SCST fine-tuning of the three XE-trained decoders on flickr8k-mini.

    nice -n 19 .venv/bin/python bench/bench_scst.py --xe-runs runs/models --out runs/scst \
        --data ../shared/data/flickr8k-mini --epochs 3

For each decoder, the XE run `--xe-runs/NAME` (trained with configs/flickr8k-mini/NAME.yaml) is
copied, then fine-tuned by the single command

    captionkit train --config configs/flickr8k-mini/NAME.yaml --init XE_COPY --objective scst \
        --epochs N --out OUT/NAME

(best epoch by val CIDEr, greedy, as for XE). Val and test CIDEr with beam 3, before (the XE run)
and after (the SCST run), and the SCST training time go into a table and `--output`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

from common import common_options, write_results

from captionkit.cli import main as cli
from captionkit.decoding import DecodingOptions
from captionkit.evaluation.evaluate import evaluate_run
from captionkit.reranking import RerankOptions

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = Path(os.path.relpath(ROOT / "configs" / "flickr8k-mini"))
MODELS = ("show_tell", "attention", "transformer")


def _cider(run: Path, data: str, split: str) -> float:
    return evaluate_run(
        run,
        data,
        split=split,
        options=DecodingOptions(beam_size=3),
        meteor=False,
        rerank=RerankOptions("none"),
    ).metrics["CIDEr"]


def _best_val(run: Path) -> float:
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return max(r["val/CIDEr"] for r in rows)


def run_model(name: str, args) -> dict:
    xe = Path(args.out) / f"xe_{name}"  # a copy: the XE run folder is never written to
    if not xe.exists():
        shutil.copytree(Path(args.xe_runs) / name, xe)
    out_dir = Path(args.out) / name
    argv = ["train", "--config", str(CONFIGS / f"{name}.yaml"), "--data", args.data,
            "--init", str(xe), "--objective", "scst", "--epochs", str(args.epochs),
            "--out", str(out_dir), *args.extra]  # fmt: skip
    start = time.perf_counter()
    assert cli(argv) == 0
    result = {"command": "captionkit " + " ".join(argv), "scst_s": time.perf_counter() - start}
    rows = [json.loads(x) for x in (out_dir / "metrics.jsonl").read_text().splitlines()]
    result["epochs"] = rows
    result["val_greedy"] = {"xe": _best_val(xe), "scst": _best_val(out_dir)}
    for split in ("val", "test"):
        result[f"{split}_beam3"] = {"xe": _cider(xe, args.data, split),
                                    "scst": _cider(out_dir, args.data, split)}  # fmt: skip
    return result


def table(results: dict) -> str:
    lines = ["| decoder | val CIDEr greedy XE → SCST | val CIDEr beam 3 XE → SCST | "
             "test CIDEr beam 3 XE → SCST | SCST time |",
             "|---|---|---|---|---|"]  # fmt: skip
    for name, r in results.items():
        cells = [f"{r[k]['xe']:.3f} → {r[k]['scst']:.3f}"
                 for k in ("val_greedy", "val_beam3", "test_beam3")]  # fmt: skip
        lines.append(f"| {name} | {' | '.join(cells)} | {r['scst_s'] / 60:.1f} min |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], parents=[common_options(output="scst.json")]
    )
    parser.add_argument("--xe-runs", default="runs/models", help="Folder of the XE runs.")
    parser.add_argument("--out", default="runs/scst")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("extra", nargs="*", help="More `train` options, after --.")
    args = parser.parse_args()
    results = {name: run_model(name, args) for name in args.models}
    print(table(results))
    write_results(args.output, {"results": results})


if __name__ == "__main__":
    main()
