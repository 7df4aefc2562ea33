"""Benchmark: the reference implementation, ruotianluo/ImageCaptioning.pytorch, on captionkit's data
and features (issues #30 item 4 and #31 item 4).

The peer's code is never part of this project: fetch it into a folder outside the repository and
pass that folder as --peer-dir. This script runs the peer's own entry points (`scripts/
prepro_labels.py`, `tools/train.py`, `tools/eval.py`) as subprocesses, with its own recipe files
(`configs/a2i2.yml` for att2in2, `configs/updown/updown.yml` for updown), and imports its model code
from --peer-dir at run time for the same-process speed comparison.

    G=$(fetch github:ruotianluo/ImageCaptioning.pytorch)    # a git dir (the search tool's fetch)
    rm -rf /tmp/peer && mkdir /tmp/peer && git --git-dir=$G archive HEAD | tar -x -C /tmp/peer
    git --git-dir=$G rev-parse HEAD > /tmp/peer/COMMIT      # recorded in the results
    .venv/bin/pip install h5py lmdbdict yacs six             # the peer's imports captionkit lacks

Subcommands (W: a work folder outside the repository, one per dataset):

    prepare  the peer's inputs from a captionkit dataset and its cached EfficientNet-Lite0 store
             (`features_for_dataset`, the default encoder): a Karpathy `dataset_<name>.json` of the
             usable images (`captionkit.data.convert`, all splits as the dataset has them), the
             peer's `prepro_labels.py` on it (its defaults: words seen more than 5 times, captions
             cut to 16 words; like the peer, it counts words over all splits), `fc/<id>.npy` (the
             pooled [D] vector, float32) and `att/<id>.npz` (`feat`: the grid [49, D], float16 as
             stored; the peer's collate makes it float32), ids = row in the Karpathy file.
    train    the peer's `tools/train.py --cfg <its recipe>` per model, checkpoints in W/<model>/.
             Only what the data forces is changed: `--fc_feat_size/--att_feat_size D` (1280, not
             2048), the data paths, and `--val_images_use -1` (the recipe's 5000 is all of COCO's
             Karpathy val; on a smaller val its loader wraps round and decodes val 5 times for the
             same predictions). Both recipes are cross-entropy only in effect: 30 epochs, batch 10
             images x 5 captions, Adam 5e-4 x 0.8 every 3 epochs, scheduled sampling +0.05 every
             5 epochs, a greedy val decode scored every 3000 iterations, the best val CIDEr kept
             as model-best (self-critical would start at epoch 30, after the last one).
             `--max-epochs` shortens it for smoke runs; `--peer-args` passes more options.
    score    the peer's `tools/eval.py` on val for each model, checkpoint (`best`: the recipe's
             model-best, chosen on val CIDEr; `last`: the end of training) and beam size (5: the
             beam of the peer's MODEL_ZOO numbers; 3: captionkit's default beam), its captions
             scored by captionkit's `score_captions` (pycocoevalcap's BLEU-1..4, METEOR, ROUGE-L,
             CIDEr-D, Java PTB tokenizer) against the dataset's val references, with per-image
             CIDEr-D, training minutes and the machine -> bench/results/peer_quality_<dataset>.json.
             `best` is selected on the val it is scored on: slightly optimistic; `last` is not.
    speed    one process, the same cached features, `--threads` torch threads (2 in #31): training
             captions/s of captionkit's default model (`create_model("attention")` with the `best`
             preset's settings scaled to the training set as `captionkit train` scales them, its
             batch of 64 captions, the engine's loss, clipping and Adam without Lightning; in fp32,
             and also under bf16 autocast where that recipe picks bf16-mixed, as on Flickr8k on a
             CPU with native bf16) against the peer's att2in2 (its recipe's step: LossWrapper, value
             clipping 0.1, Adam; batches from its own Dataset/collate, 10 images x 5 captions, and
             13 x 5 = 65 captions to match 64), data loading excluded on both sides, models taking
             turns, median of --repeats; then beam-3 images/s at batch 64 and 250 over --images val
             images (cycled; features already in memory): captionkit's plain beam (`decode`,
             `DecodingOptions(beam_size=3)`), captionkit's default decoding (consensus re-ranking of
             8 candidates, `RerankOptions("consensus")`, the neighbour index of the train split's
             pooled features), and the peer's own beam search (`model(..., mode="sample")`, beam 3,
             its eval defaults) with its `decode_sequence`. Rates per wall second and per CPU second
             (process time; steadier on a shared machine), and the decoders' mean words per caption.
             Untrained weights unless --captionkit-run / --peer-trained. Training speed hardly
             depends on the weights, decoding does: captionkit's search stops once every beam has
             ended, the peer's always runs its 20 steps, and untrained models end captions anywhere
             (in the smoke run captionkit's after 1-2 words, the peer's at once): use trained
             weights for the decoding numbers. -> bench/results/peer_speed.json.
    peer-exec  (internal) runs a peer script with the runtime shims below.

Runtime shims (applied in the peer's process by `peer-exec`, nothing in its files is edited):
- without CUDA: `Tensor.cuda`/`Module.cuda` return the object itself and `torch.cuda.synchronize`
  does nothing (its train.py calls them unconditionally); its in-training eval gets
  `device="cpu"` (`eval_split` defaults to "cuda"); with CUDA nothing of this applies;
- its `language_eval` (coco-caption's COCO annotation files and SPICE, which need a COCO-layout
  checkout and downloads) is replaced by captionkit's scorer on the same val references (BLEU,
  ROUGE-L, CIDEr-D; METEOR left out of the per-checkpoint eval to save time): its checkpoint
  selection on val CIDEr-D works as in its recipe;
- its train.py catches RuntimeError, saves and exits 0: the log is checked for that.

Smoke (flickr8k-mini, 1 epoch; OMP_NUM_THREADS=1, nice 19, a 2-core machine busy with trainings):

    P="env OMP_NUM_THREADS=1 PYTHONPATH=src nice -n 19 .venv/bin/python bench/bench_peer.py"
    $P prepare --data ../shared/data/flickr8k-mini --peer-dir /tmp/peer --work /tmp/pw-mini
    $P train --peer-dir /tmp/peer --work /tmp/pw-mini --models att2in2 --max-epochs 1 \
        --peer-args "--save_checkpoint_every 60"        # 600 images / 10 = 60 iterations an epoch
    $P train --peer-dir /tmp/peer --work /tmp/pw-mini --models updown --max-epochs 1 \
        --peer-args "--save_checkpoint_every 60 --rnn_size 64 --input_encoding_size 64 \
                     --att_hid_size 64"                  # shrunk to fit the smoke's CPU budget
    $P score --peer-dir /tmp/peer --work /tmp/pw-mini --models att2in2 --output /tmp/pq.json
    $P score --peer-dir /tmp/peer --work /tmp/pw-mini --models updown --checkpoints best \
        --beams 3 --output /tmp/pq-ud.json
    $P speed --peer-dir /tmp/peer --work /tmp/pw-mini --threads 1 --repeats 1 --batches 2 \
        --warmup 1 --images 64 --batch-sizes 64 --peer-trained \
        --captionkit-run /work/main/runs/f8k-a-xe --output /tmp/ps.json
    $P speed ... --peer-models updown --images 16 --batch-sizes 16   # updown's step, untrained

Full runs (~/data/flickr8k: 6,000 train, 1,001 val of which 1,000 usable; the store is cached;
`prepare` was run: 18 CPU s, 916 MB in /tmp/pw-f8k/prep, peer vocabulary 2,459 words):

    P="env PYTHONPATH=src .venv/bin/python bench/bench_peer.py"
    $P prepare --data ~/data/flickr8k --peer-dir /tmp/peer --work /tmp/pw-f8k
    $P train --peer-dir /tmp/peer --work /tmp/pw-f8k --models att2in2,updown
    $P score --peer-dir /tmp/peer --work /tmp/pw-f8k
    $P speed --peer-dir /tmp/peer --work /tmp/pw-f8k --threads 2 --peer-trained \
        --captionkit-run runs/<a run of the best preset on ~/data/flickr8k>

Smoke figures (flickr8k-mini, 1 thread, CPU time: wall time meant little with two nice-0
trainings on the 2 cores): prepare 12 CPU s; att2in2 1 epoch (61 iterations of 10 images x 5, one
greedy val eval, scoring) 47 CPU s, i.e. ~0.55 CPU s an iteration; updown at the recipe's size
~3 CPU s an iteration (15-19 captions per CPU second in `speed`; its 1-epoch smoke ran at rnn_size
64 to fit the budget); score 10-12 CPU s an eval of 75 images (mostly start-up), 87 CPU s for
2 checkpoints x 2 beams with METEOR; speed (tiny settings) 30-60 CPU s. Per CPU second at 1 thread
(`speed`, captionkit's run runs/f8k-a-xe, the peer's 1-epoch att2in2): training captionkit 62-74
captions, att2in2 82-84; beam 3 at batch 64 captionkit 88 images (9.3 words), consensus 26,
att2in2 55 (its 1-epoch model says "a man in a man", but its search always runs 20 steps).

Estimated CPU time of the full runs (from those figures; wall time about half on 2 idle cores):
prepare 20 CPU s (done); train att2in2 30 epochs = 18,001
iterations ~ 3 CPU hours, updown ~ 16 CPU hours (run it on a GPU: `train --models updown`, the
peer uses CUDA when it is there, no shim then); score (8 evals of 1,000 images, METEOR) ~15 CPU
min; speed with the defaults (3 repeats, 20+3 batches, 1,000 images at 64 and 250) ~10 CPU min,
~6 min on 2 threads (+ ~5 CPU min with --peer-models att2in2,updown).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import re
import resource
import runpy
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from captionkit.data import load_dataset
from captionkit.data.convert import write_dataset
from captionkit.data.records import CaptionDataset
from captionkit.data.tokenizers import build_tokenizer
from captionkit.decoding import DecodingOptions, decode
from captionkit.encoders import create_encoder
from captionkit.encoders.features import features_for_dataset
from captionkit.metrics.coco_metrics import score_captions
from captionkit.models import create_model
from captionkit.reranking import NeighbourIndex, Reranker, RerankOptions
from captionkit.reranking.neighbours import l2_normalised
from captionkit.training.module import feature_arguments, teacher_forcing_loss
from captionkit.training.presets import DEFAULT_PRESET, TrainingSize, preset_config
from captionkit.training.run_data import caption_datamodule
from captionkit.training.schedules import make_optimizer

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
PEER = "ruotianluo/ImageCaptioning.pytorch"
RECIPES = {"att2in2": "configs/a2i2.yml", "updown": "configs/updown/updown.yml"}
CHECKPOINTS = {"best": ("model-best.pth", "infos_{id}-best.pkl"),
               "last": ("model.pth", "infos_{id}.pkl")}  # fmt: skip
LABELS = "talk"  # prepro_labels writes <prep>/talk.json and <prep>/talk_label.h5


# ---------------------------------------------------------------------------------------------
# shared helpers


def machine(threads: int | None = None) -> str:
    text = (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
            f"torch {torch.__version__}")  # fmt: skip
    if threads:
        text += f", {threads} threads"
    if torch.cuda.is_available():
        text += f", {torch.cuda.get_device_name(0)}"
    return text


def peer_commit(peer_dir: Path) -> str | None:
    path = peer_dir / "COMMIT"
    return path.read_text().strip() if path.is_file() else None


def check_peer(peer_dir: Path) -> None:
    for name in ("tools/train.py", "tools/eval.py", "scripts/prepro_labels.py", *RECIPES.values()):
        if not (peer_dir / name).is_file():
            raise SystemExit(f"{peer_dir}: no {name}; is --peer-dir a checkout of {PEER}?")
    if peer_dir.resolve().is_relative_to(ROOT):
        raise SystemExit(f"--peer-dir {peer_dir} is inside the project: keep the peer's code out")


def prep_meta(work: Path) -> dict:
    path = work / "prep" / "prep.json"
    if not path.is_file():
        raise SystemExit(f"{path}: missing; run `prepare` first")
    return json.loads(path.read_text())


def peer_exec(args, script: str, script_args: list[str], cwd: Path, log: Path) -> float:
    """Run a peer script through `peer-exec` (shims) in `cwd`, output to `log`; returns the CPU
    seconds it used (children's user + system time)."""
    work = Path(args.work).resolve()
    cmd = [sys.executable, str(Path(__file__).resolve()), "peer-exec",
           "--peer-dir", str(Path(args.peer_dir).resolve()),
           "--refs", str(work / "prep" / "refs.json"), "--", script, *script_args]  # fmt: skip
    env = dict(os.environ)
    src = str(ROOT / "src")
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(f"  $ (cd {cwd} && {shlex.join(cmd[1:])}) > {log}", flush=True)
    with open(log, "w") as out:
        rc = subprocess.run(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT).returncode
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if rc != 0:
        tail = "".join(log.read_text(errors="replace").splitlines(keepends=True)[-30:])
        raise SystemExit(f"{script} failed (exit {rc}); end of {log}:\n{tail}")
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


# ---------------------------------------------------------------------------------------------
# peer-exec: the peer's scripts with the runtime shims


def peer_exec_main(args) -> None:
    peer = Path(args.peer_dir).resolve()
    sys.path.insert(0, str(peer))
    if not torch.cuda.is_available():
        torch.Tensor.cuda = lambda self, *a, **k: self
        torch.nn.Module.cuda = lambda self, *a, **k: self
        torch.cuda.synchronize = lambda *a, **k: None
    device = "cuda" if torch.cuda.is_available() else "cpu"
    refs_doc = json.loads(Path(args.refs).read_text())
    references = {im["id"]: im["captions"] for im in refs_doc["images"]}

    import captioning.utils.eval_utils as eval_utils

    def language_eval(dataset, preds, preds_n, eval_kwargs, split):
        """captionkit's scorer instead of coco-caption (whose COCO files and SPICE are absent)."""
        predictions = {p["image_id"]: p["caption"] for p in preds}
        report = score_captions(predictions, {k: references[k] for k in predictions},
                                meteor=False)  # fmt: skip
        print(f"captionkit scorer on {len(predictions)} {split} images: {report.scores}")
        return dict(report.scores)

    original_eval_split = eval_utils.eval_split

    def eval_split(model, crit, loader, eval_kwargs=None):
        eval_kwargs = dict(eval_kwargs or {})
        eval_kwargs.setdefault("device", device)
        return original_eval_split(model, crit, loader, eval_kwargs)

    eval_utils.language_eval = language_eval
    eval_utils.eval_split = eval_split
    rest = args.rest[1:] if args.rest and args.rest[0] == "--" else args.rest
    script = str(peer / rest[0])
    sys.argv = [script, *rest[1:]]
    runpy.run_path(script, run_name="__main__")


# ---------------------------------------------------------------------------------------------
# prepare


def prepare(args) -> None:
    peer, work = Path(args.peer_dir), Path(args.work).resolve()
    check_peer(peer)
    prep = work / "prep"
    prep.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    dataset = load_dataset(args.data)
    encoder = create_encoder()
    store, records = features_for_dataset(dataset, encoder)
    usable = CaptionDataset(dataset.name, dataset.image_root, records)
    for old in prep.glob("dataset_*.json"):
        old.unlink()
    write_dataset(usable, prep, "karpathy")
    (karpathy,) = prep.glob("dataset_*.json")
    karpathy_doc = json.loads(karpathy.read_text())
    assert [im["imgid"] for im in karpathy_doc["images"]] == list(range(len(records)))
    refs = {"dataset": dataset.name, "data": str(Path(args.data).resolve()),
            "images": [{"id": i, "filename": r.filename, "split": r.split,
                        "captions": r.captions} for i, r in enumerate(records)]}  # fmt: skip
    (prep / "refs.json").write_text(json.dumps(refs, ensure_ascii=False))
    log = prep / "prepro_labels.log"
    cmd = [sys.executable, str(peer.resolve() / "scripts" / "prepro_labels.py"),
           "--input_json", str(karpathy), "--output_json", str(prep / f"{LABELS}.json"),
           "--output_h5", str(prep / LABELS)]  # fmt: skip
    print(f"  $ {shlex.join(cmd)} > {log}", flush=True)
    with open(log, "w") as out:
        subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, check=True)
    info = json.loads((prep / f"{LABELS}.json").read_text())
    assert [im["id"] for im in info["images"]] == list(range(len(records)))
    rows = store.rows([dataset.path(r) for r in records])
    stamp = {"store": str(store.folder), "images": len(records)}
    done = prep / "features.json"
    if args.force or not done.is_file() or json.loads(done.read_text()) != stamp:
        (prep / "fc").mkdir(exist_ok=True)
        (prep / "att").mkdir(exist_ok=True)
        for i, row in enumerate(rows):
            np.save(prep / "fc" / f"{i}.npy", np.asarray(store.pooled[row], dtype=np.float32))
            np.savez(prep / "att" / f"{i}.npz", feat=np.asarray(store.grid[row]))
        done.write_text(json.dumps(stamp))
    splits = {s: sum(r.split == s for r in records) for s in ("train", "val", "test")}
    meta = {"data": str(Path(args.data).resolve()), "dataset": dataset.name,
            "store": str(store.folder), "encoder": encoder.name,
            "feature_dim": int(store.pooled.shape[1]), "grid": list(store.grid.shape[1:]),
            "splits": splits, "peer_vocab_size": len(info["ix_to_word"]),
            "prepro_labels": shlex.join(cmd[1:]), "peer_commit": peer_commit(peer),
            "seconds": time.perf_counter() - start}  # fmt: skip
    (prep / "prep.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(json.dumps(meta, indent=2))


# ---------------------------------------------------------------------------------------------
# train


def data_args(prep: Path, meta: dict) -> list[str]:
    dim = str(meta["feature_dim"])
    return ["--input_json", str(prep / f"{LABELS}.json"), "--input_fc_dir", str(prep / "fc"),
            "--input_att_dir", str(prep / "att"),
            "--input_label_h5", str(prep / f"{LABELS}_label.h5"),
            "--fc_feat_size", dim, "--att_feat_size", dim]  # fmt: skip


def train(args) -> None:
    peer, work = Path(args.peer_dir), Path(args.work).resolve()
    check_peer(peer)
    meta = prep_meta(work)
    for name in args.models.split(","):
        run = work / name
        if (run / f"infos_{name}.pkl").exists() and not args.resume:
            raise SystemExit(f"{run} holds a run already: --resume continues it, or remove it")
        run.mkdir(parents=True, exist_ok=True)
        script_args = ["--cfg", str(peer.resolve() / RECIPES[name]), "--id", name,
                       "--checkpoint_path", str(run), *data_args(work / "prep", meta),
                       "--val_images_use", "-1"]  # fmt: skip
        if args.max_epochs is not None:
            script_args += ["--max_epochs", str(args.max_epochs)]
        script_args += shlex.split(args.peer_args)
        print(f"{name}: training", flush=True)
        start = time.perf_counter()
        log = run / "train.log"
        cpu = peer_exec(args, "tools/train.py", script_args, run, log)
        wall = time.perf_counter() - start
        text = log.read_text(errors="replace")
        if "Save ckpt on exception" in text:
            tail = text[text.index("Save ckpt on exception") :][-3000:]
            raise SystemExit(f"{name}: the peer's train.py stopped on an exception:\n{tail}")
        steps = re.findall(r"iter (\d+) \(epoch (\d+)\)", text)
        if not (run / "model-best.pth").is_file():
            raise SystemExit(f"{name}: no model-best.pth: no checkpoint was saved (fewer "
                             "iterations than --save_checkpoint_every?)")  # fmt: skip
        record = {"model": name, "recipe": RECIPES[name], "peer_commit": peer_commit(peer),
                  "command": "tools/train.py " + shlex.join(script_args),
                  "iterations": int(steps[-1][0]) + 1 if steps else None,
                  "epochs": int(steps[-1][1]) + 1 if steps else None,
                  "wall_minutes": wall / 60, "cpu_minutes": cpu / 60,
                  "machine": machine(), "device": "cuda" if torch.cuda.is_available() else "cpu",
                  "omp_num_threads": os.environ.get("OMP_NUM_THREADS")}  # fmt: skip
        (run / "bench_train.json").write_text(json.dumps(record, indent=2) + "\n")
        print(f"{name}: {record['iterations']} iterations in {wall / 60:.1f} min "
              f"({cpu / 60:.1f} CPU min)", flush=True)  # fmt: skip


# ---------------------------------------------------------------------------------------------
# score


def score(args) -> None:
    peer, work = Path(args.peer_dir), Path(args.work).resolve()
    check_peer(peer)
    meta = prep_meta(work)
    refs_doc = json.loads((work / "prep" / "refs.json").read_text())
    images = {im["id"]: im for im in refs_doc["images"]}
    val = {im["filename"]: im["captions"] for im in refs_doc["images"] if im["split"] == "val"}
    device = "cuda" if torch.cuda.is_available() else "cpu"
    results = {"peer": PEER, "peer_commit": peer_commit(peer), "dataset": meta["dataset"],
               "data": meta["data"], "split": "val", "val_images": len(val),
               "features": f"{meta['encoder']} pooled [{meta['feature_dim']}] + grid "
                           f"{meta['grid']} (captionkit's store {meta['store']})",
               "peer_vocab_size": meta["peer_vocab_size"], "machine": machine(),
               "scorer": "captionkit.metrics.coco_metrics.score_captions (pycocoevalcap)",
               "models": {}}  # fmt: skip
    for name in args.models.split(","):
        run = work / name
        train_record = run / "bench_train.json"
        entry = {"train": json.loads(train_record.read_text()) if train_record.is_file() else None}
        for ckpt in args.checkpoints.split(","):
            weights, infos = CHECKPOINTS[ckpt]
            for beam in map(int, args.beams.split(",")):
                out = run / f"eval_{ckpt}_beam{beam}"
                (out / "vis").mkdir(parents=True, exist_ok=True)
                script_args = ["--model", str(run / weights),
                               "--infos_path", str(run / infos.format(id=name)),
                               *data_args(work / "prep", meta)[:8], "--split", "val",
                               "--num_images", "-1", "--beam_size", str(beam),
                               "--language_eval", "0", "--dump_images", "0", "--dump_json", "1",
                               "--force", "1", "--verbose_beam", "0",
                               "--device", device]  # fmt: skip
                print(f"{name} {ckpt} beam {beam}: captioning val", flush=True)
                start = time.perf_counter()
                cpu = peer_exec(args, "tools/eval.py", script_args, out, out / "eval.log")
                seconds = time.perf_counter() - start
                preds = json.loads((out / "vis" / "vis.json").read_text())
                captions = {images[p["image_id"]]["filename"]: p["caption"] for p in preds}
                missing = set(val) - set(captions)
                if missing:
                    raise SystemExit(f"{name}: no caption for {len(missing)} val images")
                report = score_captions(captions, {k: val[k] for k in captions})
                entry[f"{ckpt}_beam{beam}"] = {
                    "metrics": report.scores, "notes": report.notes,
                    "eval_wall_seconds": seconds, "eval_cpu_seconds": cpu,
                    "command": "tools/eval.py " + shlex.join(script_args),
                    "examples": dict(list(captions.items())[:5]),
                    "per_image_cider_d": dict(zip(captions, report.per_image["CIDEr"])),
                }  # fmt: skip
                print(f"  {json.dumps(report.scores)}", flush=True)
        results["models"][name] = entry
    output = Path(args.output or RESULTS / f"peer_quality_{meta['dataset']}.json")
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(results, indent=2) + "\n")
    print(quality_table(results))
    print(f"wrote {output}")


def quality_table(results: dict) -> str:
    keys = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr")
    lines = ["| model | checkpoint, beam | " + " | ".join(keys) + " | training |",
             "|---" * (len(keys) + 3) + "|"]  # fmt: skip
    for name, entry in results["models"].items():
        train_info = entry.get("train") or {}
        cpu = train_info.get("cpu_minutes")  # none for a run stopped by hand
        minutes = (f"{train_info['epochs']:.1f} epochs, {train_info['wall_minutes']:.0f} min"
                   + (f" ({cpu:.0f} CPU min)" if cpu is not None else "")
                   if train_info else "")  # fmt: skip
        for setting, value in entry.items():
            if setting == "train":
                continue
            m = value["metrics"]
            cells = " | ".join(f"{m[k]:.3f}" if k in m else "-" for k in keys)
            lines.append(f"| {name} | {setting.replace('_', ', ')} | {cells} | {minutes} |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# speed


class Peer:
    """The peer's model, its recipe's training step and its beam search, imported from
    --peer-dir."""

    def __init__(self, peer_dir: Path, work: Path, meta: dict, name: str, trained: bool):
        sys.path.insert(0, str(peer_dir.resolve()))
        import captioning.models as peer_models
        import captioning.utils.misc as peer_utils
        import captioning.utils.opts as peer_opts
        from captioning.data.dataloader import Dataset as PeerDataset
        from captioning.modules.loss_wrapper import LossWrapper

        argv = sys.argv
        sys.argv = ["train.py", "--cfg", str(peer_dir.resolve() / RECIPES[name]), "--id", name,
                    *data_args(work / "prep", meta)]  # fmt: skip
        try:
            opt = peer_opts.parse_opt()
        finally:
            sys.argv = argv
        self.dataset = PeerDataset(opt)
        opt.vocab_size, opt.seq_length = self.dataset.vocab_size, self.dataset.seq_length
        opt.vocab = self.dataset.get_vocab()
        self.model = peer_models.setup(opt)
        del opt.vocab
        self.weights = "untrained"
        if trained:
            path = work / name / "model-best.pth"
            self.model.load_state_dict(torch.load(path, map_location="cpu"))
            self.weights = str(path)
        self.loss = LossWrapper(self.model, opt)
        self.optimizer = peer_utils.build_optimizer(self.model.parameters(), opt)
        self.opt, self.utils, self.name = opt, peer_utils, name
        parser = argparse.ArgumentParser()
        peer_opts.add_eval_sample_opts(parser)
        self.eval_options = vars(parser.parse_args([])) | {"beam_size": 3, "sample_n": 1}

    def batches(self, images: int, count: int, seed: int) -> list[dict]:
        """`count` training batches of `images` images (x seq_per_img captions) made by the
        peer's own Dataset and collate function."""
        rng = np.random.default_rng(seed)
        train = self.dataset.split_ix["train"]
        out = []
        for _ in range(count):
            chosen = rng.choice(train, size=images, replace=False)
            samples = [self.dataset[(int(ix), 0, False)] for ix in chosen]
            out.append(self.dataset.collate_func(samples, "train"))
        return out

    def train_step(self, data: dict) -> int:
        """train.py's step with sc_flag, struc_flag and drop_worst off (its recipe's epochs)."""
        self.model.train()
        tensors = [data["fc_feats"], data["att_feats"], data["labels"], data["masks"],
                   data["att_masks"]]  # fmt: skip
        fc, att, labels, masks, att_masks = tensors
        self.optimizer.zero_grad()
        out = self.loss(fc, att, labels, masks, att_masks, data["gts"],
                        torch.arange(0, len(data["gts"])), False, False, False)  # fmt: skip
        loss = out["loss"].mean()
        loss.backward()
        if self.opt.grad_clip_value != 0:
            clip = getattr(torch.nn.utils, f"clip_grad_{self.opt.grad_clip_mode}_")
            clip(self.model.parameters(), self.opt.grad_clip_value)
        self.optimizer.step()
        loss.item()
        return labels.shape[0] * labels.shape[1]  # images x seq_per_img captions

    @torch.no_grad()
    def caption(self, pooled: torch.Tensor, grid: torch.Tensor) -> list[str]:
        self.model.eval()
        fc = pooled if self.opt.use_fc else pooled.new_zeros(len(pooled), 0)
        seq, _ = self.model(fc, grid, None, opt=self.eval_options, mode="sample")
        return self.utils.decode_sequence(self.model.vocab, seq)


class Captionkit:
    """captionkit's default model (the `best` preset, scaled to this training set as `captionkit
    train` scales it), its training step without Lightning, and its plain beam and default
    (consensus re-ranked) decoding."""

    def __init__(self, dataset, store, records, run: str | None):
        train = [r for r in records if r.split == "train"]
        size = TrainingSize(len(train), sum(len(r.captions) for r in train))
        self.config = preset_config(DEFAULT_PRESET, size)
        if run:
            from captionkit.models.run_folder import load_checkpoint

            trained = load_checkpoint(run)
            self.model, self.tokenizer, self.weights = trained.model, trained.tokenizer, run
        else:
            data = self.config.data
            self.tokenizer = build_tokenizer(data.tokenizer, (c for r in train for c in r.captions),
                                             data.min_count, data.vocab_size)  # fmt: skip
            torch.manual_seed(self.config.train.seed)
            self.model = create_model(self.config.model, vocab_size=len(self.tokenizer),
                                      feature_dim=int(store.pooled.shape[1]),
                                      **self.config.model_args)  # fmt: skip
            self.weights = "untrained"
        with tempfile.TemporaryDirectory() as tmp:
            self.datamodule, _ = caption_datamodule(self.config, None, store, dataset, train, [],
                                                    self.tokenizer, self.model.uses_grid,
                                                    Path(tmp))  # fmt: skip
        params = [{"params": list(self.model.parameters())}]
        self.optimizer = make_optimizer(self.config.optim, params)
        index = None
        if run and NeighbourIndex.exists(run):
            index = NeighbourIndex.load(run)
        else:
            rows = store.rows([dataset.path(r) for r in train])
            index = NeighbourIndex(
                l2_normalised(np.asarray(store.pooled[rows], np.float32)),
                [r.filename for r in train],
                [r.captions for r in train],
            )
        self.reranker = Reranker(RerankOptions("consensus"), index)
        self.beam = DecodingOptions(beam_size=3)
        self.default = self.reranker.options.decoding(self.beam)

    def batches(self, count: int) -> list[dict]:
        loader = self.datamodule.train_dataloader()
        loader.batch_sampler.set_epoch(0)
        out = []
        for batch in loader:
            out.append(batch)
            if len(out) == count:
                return out
        raise SystemExit(f"only {len(out)} captionkit batches in an epoch")

    def train_step(self, batch: dict, bf16: bool = False) -> int:
        """`CaptioningModule.training_step`'s loss (cross-entropy, <unk> targets as the default
        `unk_targets`, the attention regulariser), then clipping and Adam as the engine does;
        with `bf16`, forward and loss under bf16 autocast (Lightning's `bf16-mixed` on a CPU)."""
        self.model.train()
        tokens, inputs = batch["tokens"], batch["tokens"][:, :-1]
        features, shared = feature_arguments(self.model, batch["pooled"], batch["grid"],
                                             batch.get("image_index"))  # fmt: skip
        optim = self.config.optim
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            tf = teacher_forcing_loss(self.model, features, shared, tokens, inputs, optim,
                                      batch.get("weights"))  # fmt: skip
            loss = tf.xe if tf.regularizer is None else tf.xe + tf.regularizer
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if optim.grad_clip:
            clip = getattr(torch.nn.utils, f"clip_grad_{optim.grad_clip_algorithm}_")
            clip(self.model.parameters(), optim.grad_clip)
        self.optimizer.step()
        loss.item()
        return tokens.shape[0]

    def caption(self, pooled: torch.Tensor, grid: torch.Tensor, rerank: bool) -> list[str]:
        options = self.default if rerank else self.beam
        results = decode(self.model, pooled, grid, options, self.tokenizer)
        if rerank:
            results = self.reranker.rerank(results, lambda h: self.tokenizer.decode(h.tokens),
                                           pooled)  # fmt: skip
        return [self.tokenizer.decode(hyps[0].tokens) for hyps in results]


class Clock:
    """Wall and CPU time (this process, all its threads) since it was made."""

    def __init__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def rates(self, items: int) -> dict:
        """Items per wall second, and per CPU second: on a shared machine the second holds
        better (with N threads kept busy it is about the wall rate / N)."""
        wall, cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu
        return {"per_s": items / wall, "per_cpu_s": items / cpu}


def median_of(passes: list[dict]) -> dict:
    """The pass of median wall rate, with every pass's rates."""
    median = sorted(passes, key=lambda p: p["per_s"])[(len(passes) - 1) // 2]
    return median | {"passes": passes}


def speed(args) -> None:
    peer_dir, work = Path(args.peer_dir), Path(args.work).resolve()
    check_peer(peer_dir)
    torch.set_num_threads(args.threads)
    meta = prep_meta(work)
    dataset = load_dataset(meta["data"])
    store, records = features_for_dataset(dataset, create_encoder())
    ours = Captionkit(dataset, store, records, args.captionkit_run)
    peers = {name: Peer(peer_dir, work, meta, name, args.peer_trained)
             for name in args.peer_models.split(",")}  # fmt: skip
    total = args.warmup + args.batches
    ours_batches = ours.batches(total)
    runs = {"captionkit attention (64 captions, fp32)": (ours.train_step, ours_batches)}
    if ours.config.train.precision == "bf16-mixed":  # the scaled recipe's, where bf16 is native
        runs["captionkit attention (64 captions, bf16-mixed: its recipe here)"] = (
            lambda b: ours.train_step(b, bf16=True), ours_batches)  # fmt: skip
    for name, peer in peers.items():
        recipe_images = peer.opt.batch_size
        matched = -(-ours.config.train.batch_size // peer.opt.seq_per_img)
        for images in dict.fromkeys((recipe_images, matched)):
            label = f"peer {name} ({images} images x {peer.opt.seq_per_img})"
            runs[label] = (peer.train_step, peer.batches(images, total, seed=images))
    models = [ours.model, *(peer.model for peer in peers.values())]
    trained = [copy.deepcopy(model.state_dict()) for model in models]
    training = {label: [] for label in runs}
    for _ in range(args.repeats):
        for label, (step, batches) in runs.items():
            for b in batches[: args.warmup]:
                step(b)
            clock, captions = Clock(), 0
            for b in batches[args.warmup :]:
                captions += step(b)
            training[label].append(clock.rates(captions))
            print(f"train {label}: {training[label][-1]}", flush=True)
    for model, state in zip(models, trained):  # decode the weights loaded, not the timing's
        model.load_state_dict(state)

    val = [r for r in records if r.split == "val"]
    rows = store.rows([dataset.path(r) for r in val])
    rows = [rows[i % len(rows)] for i in range(args.images)]
    pooled = torch.from_numpy(np.asarray(store.pooled[rows], dtype=np.float32))
    grid = torch.from_numpy(np.asarray(store.grid[rows], dtype=np.float32))
    decoders = {"captionkit attention, beam 3": lambda p, g: ours.caption(p, g, rerank=False),
                "captionkit attention, default (beam 8 + consensus)":
                    lambda p, g: ours.caption(p, g, rerank=True)}  # fmt: skip
    for name, peer in peers.items():
        decoders[f"peer {name}, beam 3"] = peer.caption
    for decoder in decoders.values():  # warm-up, and the re-ranker's corpus built before timing
        decoder(pooled[:4], grid[:4])
    decoding = {f"{label} @ {bs}": [] for bs in args.batch_sizes for label in decoders}
    examples, words = {}, {}
    with torch.inference_mode():
        for _ in range(args.repeats):
            for bs in args.batch_sizes:
                for label, decoder in decoders.items():
                    clock, captions = Clock(), []
                    for i in range(0, len(rows), bs):
                        captions += decoder(pooled[i : i + bs], grid[i : i + bs])
                    decoding[f"{label} @ {bs}"].append(clock.rates(len(rows)))
                    examples[label] = captions[:3]
                    words[label] = sum(len(c.split()) for c in captions) / len(captions)
                    print(f"decode {label} @ {bs}: {decoding[f'{label} @ {bs}'][-1]}", flush=True)
    results = {
        "peer": PEER, "peer_commit": peer_commit(peer_dir), "dataset": meta["dataset"],
        "machine": machine(args.threads), "threads": args.threads,
        "command": "bench/bench_peer.py " + shlex.join(sys.argv[1:]),
        "weights": {"captionkit": ours.weights, **{n: p.weights for n, p in peers.items()}},
        "captionkit_model": {"model": ours.config.model, "model_args": ours.config.model_args,
                             "batch_size": ours.config.train.batch_size,
                             "precision": ours.config.train.precision,
                             "preset": DEFAULT_PRESET},  # fmt: skip
        "training_batches": args.batches, "warmup_batches": args.warmup, "repeats": args.repeats,
        "decode_images": args.images,
        "training_captions_per_s": {k: median_of(v) for k, v in training.items()},
        "decoding_images_per_s": {k: median_of(v) for k, v in decoding.items()},
        "mean_words_per_caption": words, "examples": examples,
    }  # fmt: skip
    results["table"] = speed_table(results)
    output = Path(args.output or RESULTS / "peer_speed.json")
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(results, indent=2) + "\n")  # its "table": the Markdown
    print(results["table"])
    print(f"wrote {output}")


def speed_table(results: dict) -> str:
    lines = [f"Same process, {results['machine']}; median of {results['repeats']} "
             f"(models taking turns); `{results['command']}`", "",
             "| training step | captions/s | per CPU-second |", "|---|---|---|"]  # fmt: skip
    for label, r in results["training_captions_per_s"].items():
        lines.append(f"| {label} | {r['per_s']:.1f} | {r['per_cpu_s']:.1f} |")
    lines += ["", "| decoding (cached features) | images/s | per CPU-second | words/caption |",
              "|---|---|---|---|"]  # fmt: skip
    for label, r in results["decoding_images_per_s"].items():
        words = results["mean_words_per_caption"][label.rsplit(" @ ", 1)[0]]
        lines.append(f"| {label} | {r['per_s']:.1f} | {r['per_cpu_s']:.1f} | {words:.1f} |")
    lines += ["", f"weights: {results['weights']}"]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p, data: bool = False):
        p.add_argument("--peer-dir", required=True, help=f"A checkout of {PEER}, outside the repo.")
        p.add_argument("--work", required=True, help="Work folder (outside the repo).")
        if data:
            p.add_argument("--data", required=True, help="A captionkit dataset.")
        return p

    p = common(sub.add_parser("prepare", help="The peer's inputs from captionkit's data."), True)
    p.add_argument("--force", action="store_true", help="Rewrite the feature files.")
    p = common(sub.add_parser("train", help="The peer's training, its own recipes."))
    p.add_argument("--models", default="att2in2,updown")
    p.add_argument("--max-epochs", type=int, default=None, help="Override the recipe's 30.")
    p.add_argument("--peer-args", default="", help="More options for the peer's train.py.")
    p.add_argument("--resume", action="store_true", help="Continue runs found in --work.")
    p = common(sub.add_parser("score", help="The peer's eval on val, captionkit's scorer."))
    p.add_argument("--models", default="att2in2,updown")
    p.add_argument("--checkpoints", default="best,last")
    p.add_argument("--beams", default="5,3")
    p.add_argument("--output", default=None)
    p = common(sub.add_parser("speed", help="Same-process speed against the peer."))
    p.add_argument("--peer-models", default="att2in2")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--batches", type=int, default=20, help="Timed training batches per pass.")
    p.add_argument("--warmup", type=int, default=3, help="Untimed training batches per pass.")
    p.add_argument("--images", type=int, default=1000, help="Val images decoded (cycled).")
    p.add_argument("--batch-sizes", type=lambda s: [int(x) for x in s.split(",")],
                   default=[64, 250])  # fmt: skip
    p.add_argument("--captionkit-run", default=None, help="A trained run (else untrained).")
    p.add_argument("--peer-trained", action="store_true", help="W/<model>/model-best.pth.")
    p.add_argument("--output", default=None)
    p = sub.add_parser("peer-exec", help="(internal) a peer script with the runtime shims.")
    p.add_argument("--peer-dir", required=True)
    p.add_argument("--refs", required=True)
    p.add_argument("rest", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    commands = {"prepare": prepare, "train": train, "score": score, "speed": speed,
                "peer-exec": peer_exec_main}  # fmt: skip
    commands[args.command](args)


if __name__ == "__main__":
    main()
