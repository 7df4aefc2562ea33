"""Benchmark: the wall time of what users run end to end, alone on the machine.

    .venv/bin/python bench/bench_wallclock.py demo       # make demo (its environment installed)
    .venv/bin/python bench/bench_wallclock.py fuzz       # make fuzz
    .venv/bin/python bench/bench_wallclock.py train --data ../shared/data/flickr8k-mini
    .venv/bin/python bench/bench_wallclock.py train --data ~/data/flickr8k --name flickr8k

Every task starts from an empty feature cache (`CAPTIONKIT_CACHE` set to a new folder, removed
afterwards); `demo` also makes its shapes data and run there, as on a fresh clone. `train` is
`captionkit train --data DATA --out RUN` with nothing else: the default recipe, feature extraction
included. Each task's wall time, exit code, peak resident memory of its processes
(`getrusage` of the children) and command are merged into the results file under the task's name
(`--name`, default the task), so one file holds every task measured on the machine it records.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import RESULTS, ROOT, machine, write_results


def command_for(args: argparse.Namespace, scratch: Path) -> list[str]:
    """The command a task runs (`make demo` makes its shapes data and run in `scratch`, as on a
    fresh clone)."""
    if args.task == "demo":
        return ["make", "demo", f"DEMO_DATA={scratch}/shapes", f"DEMO_RUN={scratch}/run"]
    if args.task == "fuzz":
        return ["make", "fuzz"]
    captionkit = str(Path(sys.executable).with_name("captionkit"))
    return [captionkit, "train", "--data", args.data, "--out", str(args.out)]


def timed(command: list[str], env: dict) -> dict:
    """Run `command` in the project folder; its wall time, exit code and peak memory."""
    start = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, env=env)
    seconds = time.perf_counter() - start
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {
        "seconds": round(seconds, 1),
        "minutes": round(seconds / 60, 2),
        "returncode": done.returncode,
        "peak_rss_gib": round(peak_kib / 2**20, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("task", choices=["demo", "fuzz", "train"])
    parser.add_argument("--data", default="../shared/data/flickr8k-mini", help="train: dataset.")
    parser.add_argument("--out", type=Path, help="train: the run folder (default runs/wall-NAME).")
    parser.add_argument("--name", help="The task's key in the results file (default: the task).")
    parser.add_argument("--output", type=Path, default=RESULTS / "wallclock.json")
    args = parser.parse_args()
    args.name = args.name or args.task
    args.out = args.out or ROOT / "runs" / f"wall-{args.name}"
    if args.task == "train" and args.out.exists():
        parser.error(f"{args.out} exists: the run must start from nothing")
    scratch = Path(tempfile.mkdtemp(prefix="captionkit-wallclock-"))
    env = {**os.environ, "CAPTIONKIT_CACHE": str(scratch / "cache")}
    command = command_for(args, scratch)
    try:
        result = timed(command, env)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    shown = " ".join(command).replace(str(Path(sys.executable).parent) + "/", ".venv/bin/")
    shown = shown.replace(f"{ROOT}/", "")
    result["command"] = "CAPTIONKIT_CACHE=<empty folder> " + shown.replace(str(scratch), "<tmp>")
    print(json.dumps(result, indent=1))
    previous = json.loads(args.output.read_text()) if args.output.exists() else {}
    tasks = {**previous.get("tasks", {}), args.name: {**result, "machine": machine()}}
    write_results(args.output, {"tasks": tasks})
    if result["returncode"]:
        sys.exit(result["returncode"])


if __name__ == "__main__":
    main()
