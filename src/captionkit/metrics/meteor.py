"""METEOR 1.5 as pycocoevalcap runs it (`-l en -norm`, the same jar and paraphrase table), safely.

pycocoevalcap's `Meteor` writes "SCORE ||| ref ||| ... ||| hyp" lines to the jar and reads one
line back per image. A caption with "|" or a line break shifts those fields or lines, and a
locale other than English makes the jar read "3.0" as an error: either way pycocoevalcap waits
forever for a line that never comes. Here captions become one line without "|", the locale is
pinned (`java.java_command`), a writer thread feeds the jar while its answers are read (no pipe
can fill up), and a timeout kills a jar that stops answering.
"""

from __future__ import annotations

import subprocess
import tempfile
import threading
from collections.abc import Hashable, Mapping, Sequence

from captionkit.errors import CaptionkitError
from captionkit.metrics.java import (
    java_command,
    java_environment,
    last_lines,
    one_line,
    pycocoevalcap_dir,
)

METEOR_JAR = "meteor-1.5.jar"
TIMEOUT_S = 600.0


def clean(caption: str) -> str:
    """One line without "|", the jar's field separator (pycocoevalcap's captions of normal text
    are unchanged)."""
    return one_line(caption.replace("|", " "))


class MeteorJar:
    """One METEOR process, reused for several `score` calls (loading its paraphrase table takes
    seconds); a call that gets no answer within `timeout` seconds kills it."""

    def __init__(self, timeout: float = TIMEOUT_S):
        self.timeout, self.timed_out = timeout, False
        try:
            cmd = java_command(
                "-jar", METEOR_JAR, "-", "-", "-stdio", "-l", "en", "-norm", memory="2G"
            )
        except FileNotFoundError as e:
            raise CaptionkitError("METEOR needs java (JRE 8 or newer), and it was not found") from e
        self.stderr = tempfile.TemporaryFile()  # noqa: SIM115 (closed by __exit__)
        self.proc = subprocess.Popen(
            cmd, cwd=pycocoevalcap_dir() / "meteor", stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=self.stderr, env=java_environment(),
        )  # fmt: skip

    def score(
        self, references: Mapping[Hashable, Sequence[str]], predictions: Mapping[Hashable, str]
    ) -> tuple[float, list[float]]:
        """(corpus METEOR, per-image METEOR) of one tokenized caption per image, like
        pycocoevalcap's `Meteor.compute_score`."""
        keys = list(predictions)
        score_lines = [
            " ||| ".join(["SCORE", *map(clean, references[k]), clean(predictions[k])]) for k in keys
        ]
        stats = self._ask(score_lines, len(keys))
        answers = self._ask([" ||| ".join(["EVAL", *stats])], len(keys) + 1)
        try:
            return float(answers[-1]), [float(a) for a in answers[:-1]]
        except ValueError as e:
            raise CaptionkitError(f"METEOR answered something that is not a number ({e})") from e

    def _ask(self, lines: Sequence[str], answers: int) -> list[str]:
        """Send `lines` (from a thread, so that no pipe fills up) and read `answers` lines."""
        data = "".join(f"{line}\n" for line in lines).encode("utf-8")
        writer = threading.Thread(target=self._write, args=(data,), daemon=True)
        timer = threading.Timer(self.timeout, self._kill)
        writer.start(), timer.start()
        try:
            out = []
            for _ in range(answers):
                line = self.proc.stdout.readline()
                if not line:
                    raise CaptionkitError(f"METEOR stopped: {self._error()}")
                out.append(line.decode("utf-8").strip())
        finally:
            timer.cancel()
        writer.join()
        return out

    def _write(self, data: bytes) -> None:
        try:
            self.proc.stdin.write(data)
            self.proc.stdin.flush()
        except (BrokenPipeError, ValueError, OSError):
            pass  # the jar died; the reader reports why

    def _kill(self) -> None:
        self.timed_out = True
        self.proc.kill()

    def _error(self) -> str:
        self.close()
        if self.timed_out:
            return f"no answer within {self.timeout:g} s"
        self.stderr.seek(0)
        return last_lines(self.stderr.read()) or f"exit status {self.proc.returncode}"

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for pipe in (self.proc.stdin, self.proc.stdout):
            pipe.close()

    def __enter__(self) -> MeteorJar:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
        self.stderr.close()


def meteor_score(
    references: Mapping[Hashable, Sequence[str]],
    predictions: Mapping[Hashable, str],
    timeout: float = TIMEOUT_S,
) -> tuple[float, list[float]]:
    """`MeteorJar.score` with a jar of its own; raises CaptionkitError when java is missing or
    the jar fails."""
    with MeteorJar(timeout) as jar:
        return jar.score(references, predictions)
