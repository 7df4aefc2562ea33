"""The original Flickr8k release: `Flickr8k.token.txt` plus the official split lists.

Each caption line is `<image>#<n>\\t<caption>`. The split lists beside it
(`Flickr_8k.trainImages.txt`, `Flickr_8k.devImages.txt`, `Flickr_8k.testImages.txt`) name one
image per line; `dev` becomes `val`. Images in no list get no split here, so the deterministic split
applies to them. `Flickr8k.lemma.token.txt` has the same layout but holds lemmatised captions, so
it is never taken for a caption file. Flickr30k's `results_20130124.token` uses the same line
format and is read the same way (it has no split lists).
"""

from __future__ import annotations

import re
from pathlib import Path

from captionkit.data.formats._common import RecordCollector, first_line, read_lines
from captionkit.data.problems import MALFORMED_ROW, Problems
from captionkit.data.records import ImageRecord

TOKEN_LINE = re.compile(r"^[^\t]+#\d+\t")
# Split list file name endings, in the order in which a listed image's split is decided.
SPLIT_LISTS = {"trainImages.txt": "train", "devImages.txt": "val", "testImages.txt": "test"}


def looks_like(path: Path) -> bool:
    """True for a `.txt`/`.token` file (not the lemma file) whose first line is `image#n<TAB>`."""
    if path.suffix not in (".txt", ".token") or "lemma" in path.name.lower():
        return False
    return bool(TOKEN_LINE.match(first_line(path)))


def read(path: Path, problems: Problems | None = None) -> list[ImageRecord]:
    """Read all captions, with the split of each image taken from the split lists."""
    problems = problems if problems is not None else Problems()
    splits = read_split_lists(path.parent, problems)
    collector = RecordCollector(problems)
    for number, line in read_lines(path, problems):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        key, tab, caption = line.partition("\t")
        image, hash_sign, index = key.strip().rpartition("#")
        if not tab or not hash_sign or not image or not index.isdigit():
            problems.add(MALFORMED_ROW, where, "expected '<image>#<n><TAB><caption>'")
            continue
        collector.add(image, caption, where, splits.get(image, ""))
    return collector.records()


def read_split_lists(folder: Path, problems: Problems) -> dict[str, str]:
    """{image: split} from the `*trainImages.txt`-style lists in `folder` (none is fine)."""
    splits: dict[str, str] = {}
    for ending, split in SPLIT_LISTS.items():
        for list_file in sorted(folder.glob(f"*{ending}")):
            for number, line in read_lines(list_file, problems):
                image = line.strip()
                if not image:
                    continue
                if splits.setdefault(image, split) != split:
                    detail = f"{image} is also in the {splits[image]} list; kept {splits[image]}"
                    problems.add(MALFORMED_ROW, f"{list_file}:{number}", detail)
    return splits
