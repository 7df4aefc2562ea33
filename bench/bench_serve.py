"""Benchmark: `captionkit serve` under load on loopback, micro-batching on and off.

    .venv/bin/python bench/bench_serve.py --checkpoint runs/models/attention \
        --images ../shared/data/flickr8k-mini/Images --clients 16 --requests 192 \
        [--output bench/results/serve.json]

For each mode the server runs in its own process (`captionkit serve`, uvicorn, one worker); for
each count of `--clients` in turn, that many threads post one image per request (beam 3 by default)
until `--requests` have been sent (or `--time-limit` seconds have passed), each client starting its
next request when its last one returns. Reported: throughput (requests/s over the whole run),
p50/p99 latency, failed requests, and the server's own count of model batches (mean images per
batch). "on" is the default batching (batches of up to 32 images, 10 ms wait); "no-wait" batches
only the requests that queued while the model was busy (`--max-wait-ms 0`); "off" captions one
request at a time (`--batch-size 1 --max-wait-ms 0`); these three decode with the beam alone
(`--rerank none`). "rerank" (`--modes ... rerank`) is "on" with the service's default decoding
(`--rerank auto`: the beam's best re-ranked by consensus, 8 candidates by default, for a run with a
neighbour index). Without a checkpoint, an untrained tiny attention model on generated shapes
stands in (its figures only compare modes).
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
from common import common_options, write_results

# The first three decode with the beam alone (`--rerank none`), as every figure of them always
# did; "rerank" is "on" with the service's default decoding (`--rerank auto`: consensus re-ranking
# for a run with a neighbour index).
MODES = {"on": ["--batch-size", "32", "--max-wait-ms", "10", "--rerank", "none"],
         "no-wait": ["--batch-size", "32", "--max-wait-ms", "0", "--rerank", "none"],
         "off": ["--batch-size", "1", "--max-wait-ms", "0", "--rerank", "none"],
         "rerank": ["--batch-size", "32", "--max-wait-ms", "10", "--rerank", "auto"]}  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(checkpoint: Path, mode: str, port: int, log) -> subprocess.Popen:
    argv = [sys.executable, "-m", "captionkit", "serve", "--checkpoint", str(checkpoint),
            "--port", str(port), *MODES[mode]]  # fmt: skip
    server = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the server exited with {server.returncode}: see {log.name}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return server
        except httpx.TransportError:
            time.sleep(0.2)
    server.terminate()
    raise SystemExit("the server did not start within 120 s")


def load(url: str, images: list[bytes], clients: int, requests: int, beam: int,
         time_limit: float) -> dict:  # fmt: skip
    """Post `requests` images from `clients` threads; latencies and failures."""
    lock, latencies, failures = threading.Lock(), [], []
    sent = 0
    stop_at = time.monotonic() + time_limit

    def client():
        nonlocal sent
        with httpx.Client(timeout=120) as http:
            while True:
                with lock:
                    if sent >= requests or time.monotonic() > stop_at:
                        return
                    i, sent = sent, sent + 1
                files = {"file": (f"{i}.jpg", images[i % len(images)], "image/jpeg")}
                start = time.perf_counter()
                try:
                    r = http.post(url, files=files, data={"beam_size": beam})
                    ok = r.status_code == 200 and bool(r.json()["images"][0]["caption"])
                    problem = None if ok else f"{r.status_code}: {r.text[:200]}"
                except httpx.HTTPError as e:
                    problem = f"{type(e).__name__}: {e}"
                elapsed = time.perf_counter() - start
                with lock:
                    (failures.append(problem) if problem else latencies.append(elapsed))

    threads = [threading.Thread(target=client) for _ in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    ms = sorted(x * 1000 for x in latencies)
    pct = (lambda q: ms[min(len(ms) - 1, round(q * (len(ms) - 1)))]) if ms else (lambda q: None)
    return {"requests": len(ms) + len(failures), "ok": len(ms), "failed": len(failures),
            "failures": failures[:5], "seconds": round(wall, 2),
            "throughput_rps": round(len(ms) / wall, 2),
            "p50_ms": pct(0.5) and round(pct(0.5), 1), "p99_ms": pct(0.99) and round(pct(0.99), 1),
            "mean_ms": ms and round(statistics.fmean(ms), 1)}  # fmt: skip


def shapes_stand_in(folder: Path) -> tuple[Path, Path]:
    """An untrained tiny attention run and generated shape images, when no run is given."""
    from captionkit.data.shapes import make_shapes
    from captionkit.data.vocab import Vocabulary
    from captionkit.encoders import create_encoder
    from captionkit.models import create_model
    from captionkit.models.run_folder import save_checkpoint

    make_shapes(folder / "shapes", n_images=64, seed=0)
    encoder = create_encoder()
    vocab = Vocabulary("a red blue green circle square triangle on the left right".split())
    model = create_model("attention", vocab_size=len(vocab), feature_dim=encoder.feature_dim)
    save_checkpoint(folder / "run", model.eval(), "attention", vocab, encoder.spec())
    return folder / "run", folder / "shapes" / "Images"


def run_bench(args, checkpoint: Path, image_dir: Path) -> dict:
    files = sorted(p for p in image_dir.iterdir() if p.suffix.lower() in (".jpg", ".png"))
    images = [p.read_bytes() for p in files[: args.distinct_images]]
    results = {}
    for mode in args.modes:
        port = free_port()
        with open(Path(args.log_dir) / f"serve_{mode}.log", "w") as log:
            server = start_server(checkpoint, mode, port, log)
            try:
                url = f"http://127.0.0.1:{port}"
                load(f"{url}/caption", images, 2, 8, args.beam_size, 60)  # warm-up
                for clients in args.clients:
                    before = httpx.get(f"{url}/health").json()
                    row = load(f"{url}/caption", images, clients, args.requests, args.beam_size,
                               args.time_limit)  # fmt: skip
                    after = httpx.get(f"{url}/health").json()
                    batches = after["batches"] - before["batches"]
                    row["model_batches"] = batches
                    row["mean_batch"] = round(
                        (after["images"] - before["images"]) / max(batches, 1), 2
                    )
                    row["server_alive"] = server.poll() is None
                    results[f"{mode}/{clients}"] = {"batching": mode, "clients": clients, **row}
            finally:
                server.terminate()
                server.wait(timeout=30)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        parents=[common_options(output="serve.json", data=False)],
    )
    parser.add_argument("--checkpoint", type=Path, default=None)
    parser.add_argument("--images", type=Path, default=None)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--requests", type=int, default=192)
    parser.add_argument("--beam-size", type=int, default=3)
    parser.add_argument("--distinct-images", type=int, default=64)
    parser.add_argument("--time-limit", type=float, default=300, help="Seconds per mode.")
    parser.add_argument("--modes", nargs="+", default=["on", "no-wait", "off"], choices=list(MODES))
    parser.add_argument("--log-dir", default=tempfile.gettempdir())
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint, image_dir = args.checkpoint, args.images
        if checkpoint is None or image_dir is None:
            checkpoint, image_dir = shapes_stand_in(Path(tmp))
        results = run_bench(args, checkpoint, image_dir)
    print(f"{'batching':<9} {'clients':>7} {'requests':>8} {'failed':>6} {'req/s':>7} "
          f"{'p50 ms':>8} {'p99 ms':>8} {'batches':>7} {'mean batch':>10}")  # fmt: skip
    for r in results.values():
        print(f"{r['batching']:<9} {r['clients']:>7} {r['requests']:>8} {r['failed']:>6} "
              f"{r['throughput_rps']:>7} "
              f"{r['p50_ms']:>8} {r['p99_ms']:>8} {r['model_batches']:>7} "
              f"{r['mean_batch']:>10}")  # fmt: skip
    record = {"checkpoint": str(checkpoint), "images": str(image_dir),
              "requests": args.requests, "beam_size": args.beam_size,
              "load_average": os.getloadavg(),
              "modes": {m: " ".join(MODES[m]) for m in args.modes},
              "results": results}  # fmt: skip
    print(f"wrote {write_results(args.output, record)}")


if __name__ == "__main__":
    main()
