"""Soak test of `captionkit serve`: minutes of mixed traffic from concurrent clients, RSS sampled.

    .venv/bin/python bench/soak_serve.py --checkpoint RUN [--minutes 5] [--clients 8] \
        [--output bench/results/soak.json]

Starts `captionkit serve --checkpoint RUN --api-key ...` on a free loopback port and sends, from
`--clients` threads, a random mix of requests: valid ones (1-3 small photos, beam 1-5, sometimes
attention overlays), and invalid ones (random bytes as an image, a truncated JPEG, an upload over
the size limit, too many files, a bad beam size, no API key, an unknown route). The server's
resident memory (RSS, /proc) is sampled every second. Passes when every valid request got 200,
every invalid one a 4xx, and RSS after the warm-up (the first fifth of the run) grew by less than
5% to the end (medians of the first and last fifths of the samples after the warm-up). Prints
one JSON summary and writes it to `--output`.
"""

from __future__ import annotations

import argparse
import io
import json
import random
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
from common import common_options, write_results
from PIL import Image

KEY = "soak-key"
LIMIT_MB = 1.0


def _photo(rng: random.Random, size: int = 160) -> bytes:
    """A small JPEG with some structure (smooth gradients and a block), different every time."""
    y, x = np.mgrid[0:size, 0:size]
    pixels = np.stack([(x * rng.random() * 3) % 256, (y * rng.random() * 3) % 256,
                       ((x + y) * rng.random()) % 256], axis=-1).astype(np.uint8)  # fmt: skip
    pixels[rng.randrange(size // 2) :][:, : rng.randrange(size)] = rng.randrange(256)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=85)
    return buffer.getvalue()


def _request(rng: random.Random) -> tuple[str, dict]:
    """(kind, httpx request arguments); kinds starting with "bad" must get a 4xx."""
    auth = {"Authorization": f"Bearer {KEY}"}
    roll = rng.random()
    if roll < 0.6:
        files = [
            ("file", (f"p{i}.jpg", _photo(rng), "image/jpeg")) for i in range(rng.randint(1, 3))
        ]
        data = {"beam_size": rng.choice([1, 2, 3, 5]), "attention": rng.random() < 0.3}
        return "valid", {"url": "/caption", "files": files, "data": data, "headers": auth}
    bad = rng.choice(["bytes", "truncated", "oversized", "too_many", "beam", "no_key", "route"])
    photo = _photo(rng)
    files = {
        "bytes": [("file", ("x.jpg", rng.randbytes(rng.randint(1, 5000)), "image/jpeg"))],
        "truncated": [("file", ("t.jpg", photo[: len(photo) // 2], "image/jpeg"))],
        "oversized": [("file", ("big.jpg", b"\xff" * int(LIMIT_MB * 1.5 * 2**20), "image/jpeg"))],
        "too_many": [("file", (f"{i}.jpg", photo, "image/jpeg")) for i in range(5)],
    }.get(bad, [("file", ("p.jpg", photo, "image/jpeg"))])
    data = {"beam_size": 99} if bad == "beam" else {}
    headers = {} if bad == "no_key" else auth
    url = "/nowhere" if bad == "route" else "/caption"
    return f"bad_{bad}", {"url": url, "files": files, "data": data, "headers": headers}


def _client(base: str, stop: float, seed: int, results: Counter, failures: list) -> None:
    rng = random.Random(seed)
    with httpx.Client(base_url=base, timeout=120) as client:
        while time.monotonic() < stop:
            kind, args = _request(rng)
            try:
                status = client.post(**args).status_code
            except httpx.HTTPError as e:
                status = f"no answer ({type(e).__name__})"
            results[(kind, status)] += 1
            ok = (
                status == 200
                if kind == "valid"
                else isinstance(status, int) and 400 <= status < 500
            )
            if not ok:
                failures.append((kind, status))


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        parents=[common_options(output="soak.json", data=False)],
    )
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--clients", type=int, default=8)
    args = parser.parse_args()
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "captionkit", "serve", "--checkpoint",
                               args.checkpoint, "--port", str(port), "--api-key", KEY,
                               "--max-upload-mb", str(LIMIT_MB), "--max-files", "4"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{base}/health").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or server.poll() is not None:
                raise SystemExit("the server did not start")
            time.sleep(0.5)
        start = time.monotonic()
        stop = start + args.minutes * 60
        results, failures, samples = Counter(), [], []
        threads = [threading.Thread(target=_client, args=(base, stop, i, results, failures))
                   for i in range(args.clients)]  # fmt: skip
        for t in threads:
            t.start()
        while any(t.is_alive() for t in threads):
            samples.append((time.monotonic() - start, _rss_mib(server.pid)))
            time.sleep(1.0)
        alive = server.poll() is None
    finally:
        server.terminate()
        server.wait(timeout=30)
    # RSS after the warm-up (the first fifth of the run): the median of its first and of its last
    # fifth, so that one sample taken mid-batch does not decide.
    warm = [rss for t, rss in samples if t >= args.minutes * 60 / 5]
    fifth = max(1, len(warm) // 5)
    first, last = float(np.median(warm[:fifth])), float(np.median(warm[-fifth:]))
    growth = last / first - 1
    summary = {
        "minutes": args.minutes, "clients": args.clients, "server_alive_at_end": alive,
        "requests": sum(results.values()),
        "by_kind_and_status": {f"{k} {s}": n for (k, s), n in sorted(results.items(), key=str)},
        "failed": len(failures), "failures": [list(f) for f in failures[:20]],
        "rss_mib": {"after_warmup": first, "end": last, "max": max(r for _, r in samples),
                    "growth": growth, "every_10_s": [round(r) for _, r in samples[::10]]},
        "passed": not failures and alive and growth < 0.05,
    }  # fmt: skip
    write_results(args.output, summary)
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
