"""SPICE (Anderson et al. 2016) with pycocoevalcap's jar, when this machine can run it.

SPICE needs Java 8 or 11 (its libraries fail on Java 17 and newer) and Stanford CoreNLP 3.6.0,
which pycocoevalcap downloads (about 400 MB) into its own folder on first use. We never start
that download or a jar that cannot work: `spice_problem` says in one line why SPICE cannot run,
and `spice_score` runs the jar with a timeout, without its LMDB cache (a native library that
fails on many machines), on files in a temporary folder.
"""

from __future__ import annotations

import json
import math
import subprocess
import tempfile
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path

from captionkit.errors import CaptionkitError
from captionkit.metrics.java import (
    java_command,
    java_environment,
    java_major_version,
    java_path,
    last_lines,
    pycocoevalcap_dir,
)

SPICE_JAR = "spice-1.0.jar"
CORENLP = ("stanford-corenlp-3.6.0.jar", "stanford-corenlp-3.6.0-models.jar")
SUPPORTED_JAVA = (8, 11)
TIMEOUT_S = 1800.0


def spice_dir() -> Path:
    return pycocoevalcap_dir() / "spice"


def spice_problem(folder: Path | None = None) -> str | None:
    """Why SPICE cannot run here, in one line; None when it can."""
    folder = folder or spice_dir()
    if java_path() is None:
        return "SPICE skipped: java not found (SPICE needs Java 8 or 11)"
    version = java_major_version()
    if version not in SUPPORTED_JAVA:
        return f"SPICE skipped: it needs Java 8 or 11, and java is version {version}"
    missing = [name for name in CORENLP if not (folder / "lib" / name).is_file()]
    if not (folder / SPICE_JAR).is_file() or missing:
        get = "python -m pycocoevalcap.spice.get_stanford_models"
        return f"SPICE skipped: Stanford CoreNLP 3.6.0 is not in {folder / 'lib'} ({get}: 400 MB)"
    return None


def spice_score(
    references: Mapping[Hashable, Sequence[str]],
    predictions: Mapping[Hashable, str],
    folder: Path | None = None,
    timeout: float = TIMEOUT_S,
) -> tuple[float, list[float]]:
    """(mean SPICE F-score, per image) of one caption per image; raises CaptionkitError with
    one line when SPICE cannot run or fails. An image SPICE cannot parse scores NaN and is left
    out of the mean (pycocoevalcap's mean would be NaN)."""
    folder = folder or spice_dir()
    problem = spice_problem(folder)
    if problem:
        raise CaptionkitError(problem)
    keys = list(predictions)
    items = [
        {"image_id": i, "test": predictions[k], "refs": list(references[k])}
        for i, k in enumerate(keys)
    ]
    with tempfile.TemporaryDirectory(prefix="captionkit-spice-") as tmp:
        in_file, out_file = Path(tmp) / "in.json", Path(tmp) / "out.json"
        in_file.write_text(json.dumps(items))
        cmd = java_command(
            "-jar",
            str(folder / SPICE_JAR),
            str(in_file),
            "-out",
            str(out_file),
            "-subset",
            "-silent",
            memory="8G",
        )
        try:
            done = subprocess.run(
                cmd, cwd=folder, capture_output=True, timeout=timeout, env=java_environment()
            )
        except subprocess.TimeoutExpired as e:
            raise CaptionkitError(f"SPICE skipped: no result within {timeout:g} s") from e
        if done.returncode != 0 or not out_file.is_file():
            why = last_lines(done.stderr, 1) or f"exit status {done.returncode}"
            raise CaptionkitError(f"SPICE failed: {why}")
        results = {r["image_id"]: r["scores"]["All"]["f"] for r in json.loads(out_file.read_text())}
    per_image = [_number(results.get(i)) for i in range(len(keys))]
    finite = [s for s in per_image if not math.isnan(s)]
    return (sum(finite) / len(finite) if finite else math.nan), per_image


def _number(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan
