"""Soak test of `captionkit serve` under heavy load and client faults, server RSS sampled.

    .venv/bin/python bench/soak_serve.py --checkpoint RUN [--minutes 10] [--clients 64] \
        [--slow 16] [--output bench/results/soak.json]

Starts `captionkit serve --checkpoint RUN --api-key ...` on a free loopback port (127.0.0.1 only)
and runs, in order:

1. load: a warm-up (`--minutes` / 5), then `--minutes` with `--clients` concurrent keep-alive
   clients of which `--slow` upload each image at 1 KB/s, then `--minutes` with the fast clients
   only. A fast client sends a random mix of requests: valid ones (1-3 small photos, beam 1-5,
   sometimes attention overlays) and invalid ones (random bytes as an image, a truncated JPEG, an
   upload over the size limit, too many files, a bad beam size, no API key, an unknown route).
   Latency p50/p99 of the fast clients' valid requests, each way;
2. disconnects: clients that leave mid-upload, before the answer and mid-answer, beside 8 fast
   clients; the server must end with nothing in flight (no leaked upload or request);
3. a burst of 1,000 requests with oversized bodies (most declaring their length, one in ten
   streamed in chunks), beside 8 fast clients: each must get 413;
4. a full queue: a second server with `--max-queue 4` gets 32 requests at once: each is answered
   200, or 503 with Retry-After at once, never a timeout;
5. SIGTERM to the first server with fast requests and slow uploads in flight: every one answered,
   and the server exits by itself (uvicorn ends a graceful shutdown by re-raising SIGTERM: 143).

Passes when no valid request failed, every invalid one got its 4xx, the p99 latency with the slow
clients is within 2x of without, RSS after the warm-up grew by less than 5% to the end of the load
(medians of the first and last fifths of the samples), and phases 2-5 passed. Prints one JSON
summary and writes it to `--output`.
"""

from __future__ import annotations

import argparse
import io
import json
import random
import select
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

import httpx
import numpy as np
from common import common_options, write_results
from PIL import Image

KEY = "soak-key"
LIMIT_MB = 1.0
MAX_FILES = 4
SLOW_RATE = 1024  # bytes per second of a slow client
SLOW_CHUNK = 128
BOUNDARY = "soak-boundary"


class Record(NamedTuple):
    kind: str  # "valid", "slow" (a valid request uploaded at 1 KB/s), or "bad_..." (must get 4xx)
    status: int | str  # a string: no answer
    latency: float


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
        "too_many": [("file", (f"{i}.jpg", photo, "image/jpeg")) for i in range(MAX_FILES + 1)],
    }.get(bad, [("file", ("p.jpg", photo, "image/jpeg"))])
    data = {"beam_size": 99} if bad == "beam" else {}
    headers = {} if bad == "no_key" else auth
    url = "/nowhere" if bad == "route" else "/caption"
    return f"bad_{bad}", {"url": url, "files": files, "data": data, "headers": headers}


def _ok(record: Record) -> bool:
    if record.kind in ("valid", "slow"):
        return record.status == 200
    return isinstance(record.status, int) and 400 <= record.status < 500


# --- clients -------------------------------------------------------------------------------------


def _client(base: str, stop: threading.Event, seed: int, records: list) -> None:
    """A fast keep-alive client: one request after the other until `stop`."""
    rng = random.Random(seed)
    with httpx.Client(base_url=base, timeout=120) as client:
        while not stop.is_set():
            kind, args = _request(rng)
            start = time.monotonic()
            try:
                status = client.post(**args).status_code
            except httpx.HTTPError as e:
                status = f"no answer ({type(e).__name__})"
            records.append(Record(kind, status, time.monotonic() - start))


def _upload_head(length: int, chunked: bool = False) -> bytes:
    size = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {length}"
    return (f"POST /caption HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {KEY}\r\n"
            f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n{size}\r\n\r\n"
            ).encode()  # fmt: skip


def _multipart(photo: bytes, attention: bool = False) -> bytes:
    part = f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{{}}"{{}}\r\n\r\n'
    file = part.format("file", '; filename="p.jpg"\r\nContent-Type: image/jpeg')
    form = (file.encode() + photo + b"\r\n"
            + f"{part.format('attention', '')}{str(attention).lower()}\r\n".encode()
            + f"--{BOUNDARY}--\r\n".encode())  # fmt: skip
    return form


def _read_answer(reader) -> int:
    """The status of the HTTP answer read from `reader` (a socket's file), its body consumed."""
    status_line = reader.readline()
    if not status_line:
        raise ConnectionResetError("closed without an answer")
    length = 0
    while (line := reader.readline()) not in (b"\r\n", b""):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    reader.read(length)
    return int(status_line.split()[1])


def _slow_client(port: int, stop: threading.Event, seed: int, records: list) -> None:
    """A keep-alive client sending valid requests, each body trickled at `SLOW_RATE`."""
    rng, sock = random.Random(seed), None
    while not stop.is_set():
        body = _multipart(_photo(rng))
        start = time.monotonic()
        try:
            if sock is None:
                sock = socket.create_connection(("127.0.0.1", port), timeout=120)
                reader = sock.makefile("rb")
            sock.sendall(_upload_head(len(body)))
            for i in range(0, len(body), SLOW_CHUNK):
                sock.sendall(body[i : i + SLOW_CHUNK])
                time.sleep(SLOW_CHUNK / SLOW_RATE)
            status = _read_answer(reader)
        except OSError as e:
            status = f"no answer ({type(e).__name__})"
            if sock is not None:
                sock.close()
            sock = None
        records.append(Record("slow", status, time.monotonic() - start))
    if sock is not None:
        sock.close()


def _clients(server: Server, fast: int, slow: int, seed: int, records: list):
    """Start `fast` and `slow` clients; returns the event that stops them and their threads."""
    stop = threading.Event()
    threads = [threading.Thread(target=_client, args=(server.base, stop, seed + i, records))
               for i in range(fast)]  # fmt: skip
    threads += [threading.Thread(target=_slow_client, args=(server.port, stop, seed + i, records))
                for i in range(fast, fast + slow)]  # fmt: skip
    for t in threads:
        t.start()
    return stop, threads


def _stop(stop: threading.Event, threads: list) -> None:
    stop.set()
    for t in threads:
        t.join()


# --- the server ----------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`captionkit serve` on a free loopback port, its log in `log`; RSS sampled every second
    into `samples` as (seconds, phase, MiB) while `phase` names what runs."""

    def __init__(self, checkpoint: str, log: Path, extra: tuple = ()):
        self.port, self.log = _free_port(), log
        self.base = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "captionkit", "serve", "--checkpoint", checkpoint,
               "--host", "127.0.0.1", "--port", str(self.port), "--api-key", KEY,
               "--max-upload-mb", str(LIMIT_MB), "--max-files", str(MAX_FILES), *extra]  # fmt: skip
        with open(log, "w") as f:
            self.process = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT)
        self.phase, self.samples, self.start = "start", [], time.monotonic()
        deadline = time.monotonic() + 300
        while not self._up():
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise SystemExit(f"the server did not start: {log.read_text()[-2000:]}")
            time.sleep(0.5)
        threading.Thread(target=self._sample, daemon=True).start()

    def _up(self) -> bool:
        try:
            return httpx.get(f"{self.base}/health").status_code == 200
        except httpx.HTTPError:
            return False

    def health(self) -> dict:
        return httpx.get(f"{self.base}/health", timeout=30).json()

    def rss_mib(self) -> float:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError("no VmRSS")

    def _sample(self) -> None:
        while self.process.poll() is None:
            try:
                self.samples.append((time.monotonic() - self.start, self.phase, self.rss_mib()))
            except (OSError, RuntimeError):  # the process just ended
                return
            time.sleep(1.0)

    def idle(self, timeout: float = 120) -> dict:
        """/health once nothing is in flight any more (or after `timeout`)."""
        deadline = time.monotonic() + timeout
        while (health := self.health())["in_flight"] or health["uploading"]:
            if time.monotonic() > deadline:
                break
            time.sleep(0.5)
        return health


# --- phases --------------------------------------------------------------------------------------


def _percentiles(values: list[float]) -> dict:
    if not values:
        return {"p50": None, "p99": None, "max": None}
    p50, p99 = np.percentile(values, [50, 99])
    return {"p50": round(float(p50), 3), "p99": round(float(p99), 3), "max": round(max(values), 3)}


def _summary(records: list[Record]) -> dict:
    failures = [r for r in records if not _ok(r)]
    counts = Counter((r.kind, r.status) for r in records)
    return {
        "requests": len(records),
        "valid_served": sum(r.status == 200 for r in records if r.kind == "valid"),
        "slow_served": sum(r.status == 200 for r in records if r.kind == "slow"),
        "failed": len(failures),
        "failures": [[r.kind, r.status] for r in failures[:20]],
        "latency_s": _percentiles([r.latency for r in records if r.kind == "valid" and _ok(r)]),
        "slow_latency_s": _percentiles([r.latency for r in records if r.kind == "slow" and _ok(r)]),
        "by_kind_and_status": {f"{k} {s}": n for (k, s), n in sorted(counts.items(), key=str)},
    }


def _load(server: Server, phase: str, seconds: float, fast: int, slow: int, seed: int) -> dict:
    server.phase, records = phase, []
    stop, threads = _clients(server, fast, slow, seed, records)
    time.sleep(seconds)
    _stop(stop, threads)
    return {"seconds": seconds, "fast_clients": fast, "slow_clients": slow, **_summary(records)}


def _disconnect(port: int, how: str, rng: random.Random) -> str:
    """One client leaving: `how` it left, or what went wrong before it could."""
    body = _multipart(_photo(rng), attention=how == "mid_answer")
    cut = len(body) // 2 if how == "mid_upload" else len(body)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=120) as sock:
            sock.sendall(_upload_head(len(body)) + body[:cut])
            if how == "mid_answer":  # the answer has begun: leave with the rest unread, by a reset
                sock.recv(1)
                linger = (1).to_bytes(4, sys.byteorder) + (0).to_bytes(4, sys.byteorder)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
        return how
    except OSError as e:
        return f"{how}: {type(e).__name__}"


def _disconnects(server: Server, n: int, seed: int) -> dict:
    """`n` clients leaving mid-upload, before the answer and mid-answer, beside 8 fast ones."""
    server.phase, records, rng = "disconnects", [], random.Random(seed)
    stop, threads = _clients(server, 8, 0, seed, records)
    kinds = ["mid_upload", "before_answer", "mid_answer"] * (n // 3)
    rngs = [random.Random(rng.random()) for _ in kinds]
    with ThreadPoolExecutor(8) as pool:
        left = list(pool.map(lambda how, r: _disconnect(server.port, how, r), kinds, rngs))
    _stop(stop, threads)
    health = server.idle()
    return {"clients": Counter(left), "left_in_flight": health["in_flight"],
            "left_uploading": health["uploading"], "beside": _summary(records),
            "passed": not health["in_flight"] and not health["uploading"]
            and not any(not _ok(r) for r in records)}  # fmt: skip


def _oversized(port: int, chunked: bool, limit: int) -> int | str:
    """One request with a body over `limit`: declared by its length (only 1 KB of it sent), or
    streamed in chunks until the server answers."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
            if not chunked:
                sock.sendall(_upload_head(2 * limit) + b"x" * 1024)
                return _read_answer(sock.makefile("rb"))
            # a valid start of a form, so that the server reads on to its limit (random bytes
            # would be refused at once as a malformed form: 400)
            start = f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="b.jpg"'
            start = (start + "\r\n\r\n").encode()
            sock.sendall(_upload_head(0, chunked=True) + b"%x\r\n%s\r\n" % (len(start), start))
            chunk, sent = b"%x\r\n%s\r\n" % (65536, b"x" * 65536), 0
            while sent <= 2 * limit and not select.select([sock], [], [], 0)[0]:
                sock.sendall(chunk)
                sent += 65536
            return _read_answer(sock.makefile("rb"))
    except OSError as e:
        return f"no answer ({type(e).__name__})"


def _burst(server: Server, n: int, seed: int) -> dict:
    server.phase, records = "oversized burst", []
    stop, threads = _clients(server, 8, 0, seed, records)
    limit = MAX_FILES * (int(LIMIT_MB * 2**20) + 4096) + 65536  # ServeSettings.max_request_bytes
    start = time.monotonic()
    with ThreadPoolExecutor(32) as pool:
        statuses = list(pool.map(lambda i: _oversized(server.port, i % 10 == 0, limit), range(n)))
    seconds = time.monotonic() - start
    _stop(stop, threads)
    counts = Counter(statuses)
    beside = _summary(records)
    return {"requests": n, "streamed_in_chunks": n // 10, "seconds": round(seconds, 1),
            "statuses": {str(k): v for k, v in counts.items()}, "beside": beside,
            "passed": counts[413] == n and beside["failed"] == 0}  # fmt: skip


def _full_queue(checkpoint: str, folder: Path, seed: int) -> dict:
    """A server holding at most 4 requests gets 32 at once: each is 200, or 503 at once."""
    server = Server(checkpoint, folder / "serve-queue.log", ("--max-queue", "4"))
    rng, barrier = random.Random(seed), threading.Barrier(32)
    files = [[("file", (f"p{i}.jpg", _photo(rng), "image/jpeg")) for i in range(3)]
             for _ in range(32)]  # fmt: skip

    def post(files, together=True):
        with httpx.Client(base_url=server.base, timeout=120) as client:
            if together:
                barrier.wait()
            start = time.monotonic()
            try:
                r = client.post("/caption", files=files, headers={"Authorization": f"Bearer {KEY}"})
                return r.status_code, r.headers.get("retry-after"), time.monotonic() - start
            except httpx.HTTPError as e:
                return f"no answer ({type(e).__name__})", None, time.monotonic() - start

    try:
        with ThreadPoolExecutor(32) as pool:
            answers = list(pool.map(post, files))
        again = post(files[0], together=False)[0]  # the server serves again once not full
    finally:
        server.process.terminate()
        server.process.wait(60)
    busy = [a for a in answers if a[0] == 503]
    return {"requests": 32, "max_queue": 4,
            "statuses": {str(k): v for k, v in Counter(a[0] for a in answers).items()},
            "busy_with_retry_after": sum(a[1] is not None for a in busy),
            "busy_latency_max_s": round(max((a[2] for a in busy), default=0), 3),
            "served_after": again,
            "passed": bool(busy) and all(a[1] for a in busy) and again == 200
            and all(a[0] in (200, 503) for a in answers)
            and max(a[2] for a in busy) < 2}  # fmt: skip


def _sigterm(server: Server, seed: int) -> dict:
    """SIGTERM with 4 slow uploads and 32 requests of 3 photos in flight: all answered."""
    server.phase, records, rng = "sigterm", [], random.Random(seed)
    stop, threads = _clients(server, 0, 4, seed, records)
    auth = {"Authorization": f"Bearer {KEY}"}

    def post(_):
        files = [("file", (f"p{i}.jpg", _photo(random.Random(rng.random())), "image/jpeg"))
                 for i in range(3)]  # fmt: skip
        start = time.monotonic()
        try:
            status = httpx.post(f"{server.base}/caption", files=files, headers=auth,
                                timeout=120).status_code  # fmt: skip
        except httpx.HTTPError as e:
            status = f"no answer ({type(e).__name__})"
        records.append(Record("valid", status, time.monotonic() - start))

    time.sleep(1.0)  # the slow uploads are under way (each takes about 10 s)
    stop.set()  # one request each: the one under way when the signal comes
    pool = ThreadPoolExecutor(32)
    futures = [pool.submit(post, i) for i in range(32)]
    deadline = time.monotonic() + 10
    while (in_flight := server.health()["in_flight"]) < 20 and time.monotonic() < deadline:
        time.sleep(0.05)
    server.process.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    code = server.process.wait(120)
    exit_s = time.monotonic() - signalled
    for f in futures:
        f.result()
    pool.shutdown()
    _stop(stop, threads)
    finished = "Finished server process" in server.log.read_text()
    summary = _summary(records)
    return {"in_flight_at_signal": in_flight, "answered": summary["requests"],
            "statuses": summary["by_kind_and_status"], "exit_code": code,
            "exit_seconds": round(exit_s, 1), "graceful_shutdown_logged": finished,
            "passed": summary["failed"] == 0 and summary["requests"] == 36 and finished
            and code == -signal.SIGTERM}  # fmt: skip


def _rss(server: Server, load_phases: tuple[str, ...]) -> dict:
    """RSS at each phase's end, and its growth over the load after the warm-up: the medians of
    the first and last fifths of the samples, so that one sample taken mid-batch does not decide."""
    loaded = [rss for _, phase, rss in server.samples if phase in load_phases]
    fifth = max(1, len(loaded) // 5)
    first, last = float(np.median(loaded[:fifth])), float(np.median(loaded[-fifth:]))
    at_end = {}
    for _, phase, rss in server.samples:
        at_end[phase] = round(rss, 1)
    return {"after_warmup": round(first, 1), "end_of_load": round(last, 1),
            "growth": round(last / first - 1, 4), "at_end_of": at_end,
            "max": round(max(r for *_, r in server.samples), 1),
            "every_30_s": [round(r) for *_, r in server.samples[::30]]}  # fmt: skip


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        parents=[common_options(output="soak.json", data=False)],
    )
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument(
        "--minutes",
        type=float,
        default=10.0,
        help="Length of each load phase, with and without the slow clients.",
    )
    parser.add_argument("--clients", type=int, default=64, help="Concurrent clients in all.")
    parser.add_argument("--slow", type=int, default=16, help="Of them, those uploading at 1 KB/s.")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()  # fmt: skip


def main() -> None:
    args = _arguments()
    seconds, fast = args.minutes * 60, args.clients - args.slow
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        server = Server(args.checkpoint, Path(tmp) / "serve.log")
        idle = server.rss_mib()
        try:
            _load(server, "warm-up", seconds / 5, fast, 0, args.seed)
            with_slow = _load(server, "with slow", seconds, fast, args.slow, args.seed + 1000)
            without = _load(server, "without slow", seconds, fast, 0, args.seed + 2000)
            disconnects = _disconnects(server, 300, args.seed + 3000)
            burst = _burst(server, 1000, args.seed + 4000)
            sigterm = _sigterm(server, args.seed + 5000)
        finally:
            if server.process.poll() is None:
                server.process.kill()
        full = _full_queue(args.checkpoint, Path(tmp), args.seed + 6000)
    rss = {"idle_after_start": round(idle, 1), **_rss(server, ("with slow", "without slow"))}
    p99s = with_slow["latency_s"]["p99"], without["latency_s"]["p99"]
    ratio = p99s[0] / p99s[1] if all(p99s) else float("inf")
    criteria = {
        "no_failed_request": with_slow["failed"] == 0 and without["failed"] == 0,
        "p99_with_slow_within_2x": ratio <= 2,
        "rss_growth_under_5pct": rss["growth"] < 0.05,
        "disconnects": disconnects["passed"], "oversized_burst": burst["passed"],
        "full_queue_503": full["passed"], "sigterm": sigterm["passed"],
    }  # fmt: skip
    summary = {
        "minutes": args.minutes, "clients": args.clients, "slow_clients": args.slow,
        "load": {"with_slow": with_slow, "without_slow": without,
                 "p99_ratio_with_to_without": round(ratio, 3)},
        "disconnects": disconnects, "oversized_burst": burst, "full_queue": full,
        "sigterm": sigterm, "rss_mib": rss, "criteria": criteria, "passed": all(criteria.values()),
    }  # fmt: skip
    write_results(args.output, summary)
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
