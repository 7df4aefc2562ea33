"""Benchmark: which model of a run to keep: the best epoch by val CIDEr, or the mean of the
weights of the last epochs.

    .venv/bin/python bench/bench_selection.py --data ../shared/data/flickr8k-mini \
        --out runs/curves --seeds 0,1,2,3 [--jobs 2] [--output bench/results/selection.json]

Each seed trains the recipe given after `--` (default: the `best` preset's decoder and rate with
30 epochs and no early stopping, `--patience 0 --average-last 0`) into `OUT/c-sSEED`, keeping
every epoch's weights and val captions (`OUT/c-sSEED/epochs/`; the training code is patched
here, not changed). Then, per run, from those:
- per-epoch val (the captions validation made) and test CIDEr-D (decoded here; beam 3, `<unk>`
  forbidden, our exact CIDEr-D per image);
- each selection rule's epoch, its val and test CIDEr, and its split-half estimate on val: pick
  the epoch on a random half of the val images, score it on the other half (300 splits, both
  ways): an estimate of the rule's val score without the optimism of picking on the same images;
- the mean of the weights of the last K epochs (K = 5, 10, 15), decoded on val and test.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from common import common_options, per_image_cider, write_results
from safetensors.torch import load_file, save_file

from captionkit.data import load_dataset
from captionkit.decoding import DecodingOptions
from captionkit.evaluation.evaluate import caption_rows, member_stores, pin_splits
from captionkit.models.run_folder import load_checkpoint

RECIPE = ["--patience", "0", "--epochs", "30", "--average-last", "0"]
MEANS = (5, 10, 15)


def train_keeping_epochs(argv: list[str]) -> None:
    """`captionkit train ARGV`, also writing each validation's model and captions to
    RUN/epochs/ (a patch of `CaptioningModule.on_validation_epoch_end`)."""
    from captionkit.cli import main as cli
    from captionkit.training.module import CaptioningModule

    run, before = Path(argv[argv.index("--out") + 1]), CaptioningModule.on_validation_epoch_end

    def keep(self) -> None:
        if self.trainer.is_global_zero and self._val_predictions:
            (run / "epochs").mkdir(exist_ok=True)
            epoch = self.current_epoch
            (run / "epochs" / f"val-{epoch:02d}.json").write_text(json.dumps(self._val_predictions))
            weights = {k: v.detach().clone() for k, v in self.kept_model.state_dict().items()}
            save_file(weights, run / "epochs" / f"model-{epoch:02d}.safetensors")
        before(self)

    CaptioningModule.on_validation_epoch_end = keep
    sys.exit(cli(["train", *argv]))


class Curve:
    """A run trained by `train_keeping_epochs`: its epochs' weights, and val/test to score on."""

    def __init__(self, run_dir: Path, data: str):
        self.dir, self.trained = run_dir, load_checkpoint(run_dir)
        dataset = load_dataset(data)
        pin_splits(dataset, Path(data), run_dir, self.trained)
        stores, records = member_stores(dataset, [self.trained], None)
        self.store, self.splits = stores[0], {}
        for split in ("val", "test"):
            chosen = [r for r in records if r.split == split]
            rows = self.store.rows([dataset.path(r) for r in chosen])
            self.splits[split] = (chosen, rows, {r.filename: r.captions for r in chosen})
        self.epochs = len(list((run_dir / "epochs").glob("model-*.safetensors")))

    def weights(self, epoch: int) -> dict:
        return load_file(self.dir / "epochs" / f"model-{epoch:02d}.safetensors")

    def mean_weights(self, epochs: range) -> dict:
        states = [self.weights(e) for e in epochs]
        return {k: sum(s[k] for s in states) / len(states) for k in states[0]}

    def score(self, weights: dict, split: str) -> np.ndarray:
        trained = copy.deepcopy(self.trained)
        trained.model.load_state_dict(weights)
        chosen, rows, references = self.splits[split]
        captions = caption_rows(trained, self.store, rows, DecodingOptions(beam_size=3))
        return per_image_cider({r.filename: c for r, c in zip(chosen, captions)}, references)

    def val_of_epoch(self, epoch: int) -> np.ndarray:
        captions = json.loads((self.dir / "epochs" / f"val-{epoch:02d}.json").read_text())
        return per_image_cider(captions, self.splits["val"][2])


def patience_pick(curve: np.ndarray, patience: int) -> int:
    """The epoch that early stopping with `patience` (0: none) keeps on a val curve."""
    best, since = 0, 0
    for epoch in range(1, len(curve)):
        if curve[epoch] > curve[best]:
            best, since = epoch, 0
        else:
            since += 1
            if patience and since >= patience:
                break
    return best


def smooth_pick(curve: np.ndarray, width: int) -> int:
    """The middle epoch of the best `width` consecutive epochs by mean val."""
    return int(np.argmax(np.convolve(curve, np.ones(width) / width, "valid"))) + width // 2


RULES = {
    "best epoch, patience 5": lambda c: patience_pick(c, 5),
    "best epoch of 30": lambda c: patience_pick(c, 0),
    "best 3-epoch mean": lambda c: smooth_pick(c, 3),
    "best 5-epoch mean": lambda c: smooth_pick(c, 5),
    "last epoch": lambda c: len(c) - 1,
}


def split_half(val: np.ndarray, rule, splits: int = 300) -> float:
    """The val score of the epoch `rule` picks on one half of the images, on the other half."""
    rng, scores = np.random.default_rng(0), []
    for _ in range(splits):
        order = rng.permutation(val.shape[1])
        a, b = order[: len(order) // 2], order[len(order) // 2 :]
        for pick, score in ((a, b), (b, a)):
            scores.append(val[rule(val[:, pick].mean(1)), score].mean())
    return float(np.mean(scores))


def analyse(run_dir: Path, data: str) -> dict:
    """Every rule and mean of one curve run (kept in RUN/selection.json)."""
    path = run_dir / "selection.json"
    if path.exists():
        return json.loads(path.read_text())
    curve = Curve(run_dir, data)
    val = np.stack([curve.val_of_epoch(e) for e in range(curve.epochs)])
    test = np.stack([curve.score(curve.weights(e), "test") for e in range(curve.epochs)])
    out = {"val": val.mean(1).tolist(), "test": test.mean(1).tolist(), "rules": {}, "means": {}}
    for name, rule in RULES.items():
        epoch = rule(val.mean(1))
        out["rules"][name] = {"epoch": epoch, "val": float(val[epoch].mean()),
                              "test": float(test[epoch].mean()),
                              "val_split_half": split_half(val, rule)}  # fmt: skip
    for k in MEANS:
        weights = curve.mean_weights(range(curve.epochs - k, curve.epochs))
        out["means"][f"mean of the last {k}"] = {
            split: curve.score(weights, split).tolist() for split in ("val", "test")}  # fmt: skip
    path.write_text(json.dumps(out))
    return out


def summary(results: dict[str, dict]) -> str:
    """Markdown table: each rule and mean, averaged over the runs."""
    lines = ["| model kept | val CIDEr | val, split-half estimate | test CIDEr | epoch per run |",
             "| --- | --- | --- | --- | --- |"]  # fmt: skip
    runs = list(results.values())
    for name in RULES:
        rows = [r["rules"][name] for r in runs]
        mean = {k: np.mean([row[k] for row in rows]) for k in ("val", "val_split_half", "test")}
        epochs = ", ".join(str(row["epoch"]) for row in rows)
        lines.append(f"| {name} | {mean['val']:.3f} | {mean['val_split_half']:.3f} | "
                     f"{mean['test']:.3f} | {epochs} |")  # fmt: skip
    for name in runs[0]["means"]:
        val, test = (np.mean([np.mean(r["means"][name][s]) for r in runs]) for s in ("val", "test"))
        lines.append(f"| {name} epochs' weights | {val:.3f} | (no choice made on val) | "
                     f"{test:.3f} | |")  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    if sys.argv[1:2] == ["--train"]:  # a worker: one training run
        train_keeping_epochs(sys.argv[2:])
    if sys.argv[1:2] == ["--analyse"]:  # a worker: one run's analysis
        analyse(Path(sys.argv[2]), sys.argv[3])
        return
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], parents=[common_options(output="selection.json")]
    )
    parser.add_argument("--out", default="runs/curves")
    parser.add_argument("--seeds", default="0,1,2,3")
    parser.add_argument("--jobs", type=int, default=1, help="Runs at a time (one thread each).")
    parser.add_argument("recipe", nargs="*", default=RECIPE, help="train options (after --)")
    args = parser.parse_args()
    runs = [Path(args.out) / f"c-s{s}" for s in args.seeds.split(",")]
    env = {**os.environ, **({"OMP_NUM_THREADS": "1"} if args.jobs > 1 else {})}

    def one(run: Path) -> dict:
        if not (run / "model.safetensors").exists():
            argv = ["--data", args.data, "--out", str(run), "--seed", run.name[3:], *args.recipe]
            subprocess.run([sys.executable, __file__, "--train", *argv], check=True, env=env)
        worker = [sys.executable, __file__, "--analyse", str(run), args.data]
        subprocess.run(worker, check=True, env=env)
        return json.loads((run / "selection.json").read_text())

    with ThreadPoolExecutor(args.jobs) as pool:
        results = dict(zip((r.name for r in runs), pool.map(one, runs)))
    write_results(args.output, results)
    print(summary(results))


if __name__ == "__main__":
    main()
