"""Benchmark: runs compared epoch by epoch on the val CIDEr that training records.

    .venv/bin/python bench/bench_val_curves.py --runs runs/f8k-xe,runs/f8k-tf \
        --output bench/results/flickr8k_curves.json

A screen, for levers too slow to train to the end on 2 cores: runs trained under the same
schedule (epochs, decay) are compared at the same epoch, on the val CIDEr each epoch's validation
measured (beam 3, captionkit's CIDEr-D, `metrics.jsonl`), and one that trails at every epoch is
stopped. A run with an SCST phase contributes its `scst/metrics.jsonl` as a second curve (each
curve is named by its objective). Each
curve is kept with the options its run was trained with (the values of its `config.yaml` that
differ from the first run's), so the file says what was compared.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from common import RESULTS, write_results

from captionkit.reporting.plots import read_validations
from captionkit.training.config import RunConfig


def curve(run_dir: Path) -> list[float]:
    """Val CIDEr of each epoch recorded in a run folder's `metrics.jsonl`, in epoch order."""
    rows = read_validations(run_dir)
    by_epoch = {r["epoch"]: r["val/CIDEr"] for r in rows if "val/CIDEr" in r}
    return [round(by_epoch[e], 4) for e in sorted(by_epoch)]


def flat(config: RunConfig) -> dict[str, object]:
    """A run config as `group.field: value` pairs (its model arguments as `model_args.NAME`)."""
    data = config.to_dict()
    out = {}
    for group, values in data.items():
        if isinstance(values, dict):
            out.update({f"{group}.{k}": v for k, v in values.items()})
        else:
            out[group] = values
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", required=True, help="Comma-separated run folders.")
    parser.add_argument("--output", type=Path, default=RESULTS / "flickr8k_curves.json")
    args = parser.parse_args()
    runs = [Path(r) for r in args.runs.split(",")]
    configs = [flat(RunConfig.from_yaml(run / "config.yaml")) for run in runs]
    results = {}
    for run, config in zip(runs, configs):
        differs = {k: v for k, v in config.items() if configs[0].get(k) != v}
        phases = {p: curve(run / p) for p in ("", "scst")}
        curves = {p or config["optim.objective"]: c for p, c in phases.items() if c}
        results[str(run)] = {"differs_from_first": differs, "val_cider": curves}
        for phase, values in curves.items():
            print(f"{run} {phase}: " + " ".join(f"{v:.3f}" for v in values))
    write_results(args.output, {"runs": results})


if __name__ == "__main__":
    main()
