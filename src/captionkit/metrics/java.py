"""Running the Java tools of pycocoevalcap (PTB tokenizer, METEOR, SPICE) the same way on every
machine.

pycocoevalcap starts `java` with the user's locale. Under a German or French locale Java prints
METEOR's scores as "0,25" and Python cannot read them; under LC_ALL=C (containers, CI) Java 17
reads and writes ASCII, so "café" becomes "caf?" and the tokens change. Every command here pins
the locale to English/US and the encoding to UTF-8, in the arguments (which win over
JAVA_TOOL_OPTIONS) and in the environment.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from functools import lru_cache
from pathlib import Path

# Command-line -D options come after JAVA_TOOL_OPTIONS, so they win over a user's.
JAVA_OPTIONS = (
    "-Duser.language=en",
    "-Duser.country=US",
    "-Dfile.encoding=UTF-8",
    "-Dsun.stdout.encoding=UTF-8",
    "-Dsun.stderr.encoding=UTF-8",
)
# Every character str.splitlines() breaks on: one caption must stay one line for the tools.
_LINE_BREAKS = re.compile("[\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]")


def pycocoevalcap_dir() -> Path:
    """The installed pycocoevalcap package, where its jars are."""
    import pycocoevalcap.tokenizer.ptbtokenizer as ptb

    return Path(ptb.__file__).resolve().parent.parent


def java_path() -> str | None:
    return shutil.which("java")


def java_environment() -> dict[str, str]:
    """The caller's environment with the C locale (the Java options set the rest)."""
    return {**os.environ, "LC_ALL": "C", "LANG": "C"}


def java_command(*args: str, memory: str | None = None) -> list[str]:
    """`java` with the locale and encoding options, an optional -Xmx, then `args`."""
    java = java_path()
    if java is None:
        raise FileNotFoundError("java")
    return [java, *JAVA_OPTIONS, *([f"-Xmx{memory}"] if memory else []), *args]


@lru_cache(maxsize=4)
def java_major_version(java: str | None = None) -> int | None:
    """8 for Java 1.8, 11, 17...; None when java is missing or says no version."""
    java = java or java_path()
    if java is None:
        return None
    try:
        done = subprocess.run(
            [java, "-version"], capture_output=True, text=True, timeout=30, env=java_environment()
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    found = re.search(r'version "(\d+)(?:\.(\d+))?', done.stderr + done.stdout)
    if not found:
        return None
    major = int(found.group(1))
    return int(found.group(2) or 0) if major == 1 else major


def one_line(text: str) -> str:
    """A caption as one line of plain spaces (the Java tools read one caption per line)."""
    return " ".join(_LINE_BREAKS.sub(" ", text).split())


def last_lines(text: str | bytes, count: int = 3) -> str:
    """The end of a tool's error output, for an error message."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    return " | ".join(line.strip() for line in text.strip().splitlines()[-count:])
