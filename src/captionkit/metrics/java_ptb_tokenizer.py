"""pycocoevalcap's PTB tokenization (Stanford CoreNLP 3.4.1's PTBTokenizer, lowercased, its
punctuation list removed), run with the pinned locale of `java.java_command`.

pycocoevalcap's `PTBTokenizer` writes a temporary file into its own package folder (read-only
in many installs) and trusts that the jar gives back one line per caption; here the captions go
through stdin as one line each (line breaks inside a caption become spaces) and the count of
lines that come back is checked.
"""

from __future__ import annotations

import subprocess
from collections.abc import Hashable, Mapping, Sequence

from captionkit.errors import CaptionkitError
from captionkit.metrics.java import (
    java_command,
    java_environment,
    last_lines,
    one_line,
    pycocoevalcap_dir,
)

CORENLP_JAR = "stanford-corenlp-3.4.1.jar"
TIMEOUT_S = 600.0


def ptb_tokenize(
    captions: Mapping[Hashable, Sequence[str]], timeout: float = TIMEOUT_S
) -> dict[Hashable, list[str]]:
    """Image key -> captions as space-separated tokens, like `PTBTokenizer().tokenize` of
    {key: [{"caption": c}, ...]}; raises FileNotFoundError when java is missing."""
    from pycocoevalcap.tokenizer.ptbtokenizer import PUNCTUATIONS

    keys = [k for k, caps in captions.items() for _ in caps]
    lines = [one_line(c) for caps in captions.values() for c in caps]
    cmd = java_command(
        "-cp", CORENLP_JAR, "edu.stanford.nlp.process.PTBTokenizer", "-preserveLines", "-lowerCase"
    )
    try:
        done = subprocess.run(
            cmd,
            input="\n".join(lines).encode("utf-8"),
            capture_output=True,
            cwd=pycocoevalcap_dir() / "tokenizer",
            env=java_environment(),
            timeout=timeout,
        )
    except subprocess.TimeoutExpired as e:
        raise CaptionkitError(f"PTB tokenizer: no answer within {timeout:g} s") from e
    out = done.stdout.decode("utf-8").split("\n")
    if done.returncode != 0 or len(out) < len(lines):
        why = last_lines(done.stderr) or f"{len(out)} lines back for {len(lines)} captions"
        raise CaptionkitError(f"PTB tokenizer failed: {why}")
    punctuation = set(PUNCTUATIONS)
    tokenized: dict[Hashable, list[str]] = {k: [] for k in captions}
    for key, line in zip(keys, out):
        tokenized[key].append(" ".join(w for w in line.rstrip().split(" ") if w not in punctuation))
    return tokenized
