"""Files written so that a reader never sees a part of one: the one way the project writes
checkpoints, exported models, feature-store indexes, token arrays and neighbour indexes."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

from safetensors import SafetensorError

from captionkit.errors import CaptionkitError


def write_atomically(path: Path, write: Callable[[str], object]) -> None:
    """`write(tmp)` a file beside `path`, flush it to disk, then rename it to `path`: readers
    see the old file or the new one, never a part. A failed write (a full disk, say) removes the
    partial file and is an error naming `path` that says the previous file is intact."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(str(tmp))
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())  # on disk before the rename makes it the file
        os.replace(tmp, path)
    except (OSError, SafetensorError) as e:
        problem = getattr(e, "strerror", None) or str(e)
        kept = "the previous one is intact" if path.exists() else "there was none before"
        raise CaptionkitError(f"{path}: could not write it ({problem}); {kept}") from None
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomically(path: Path, text: str) -> None:
    """`write_atomically` of a UTF-8 text file."""
    write_atomically(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def write_json_atomically(path: Path, data, **dumps_options) -> None:
    """`write_atomically` of a JSON file."""
    write_text_atomically(path, json.dumps(data, **dumps_options))
