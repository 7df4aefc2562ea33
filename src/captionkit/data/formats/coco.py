"""COCO caption annotations: `captions_train2014.json`, `captions_val2014.json` (and 2017).

Each file has `images[]` (`id`, `file_name`) and `annotations[]` (`image_id`, `caption`); captions
are joined to their image through the id.

Splits. COCO's own test images have no public captions, so its `val` images are the only held-out
data. Keeping it simple and honest: images from a *train* file get the split `train`; images from
a *val* file get no split here and `load_dataset` divides them deterministically into equal `val`
and `test` halves (`assign_splits` with fractions (0, 0.5, 0.5), see `UNSPLIT_FRACTIONS`). This is
not the Karpathy split; use `dataset_coco.json` to compare with published numbers.

Files and folders. Given a folder, every `captions_*.json` in it is read. COCO 2017 re-divides
the 2014 images (train2017 holds most of val2014), so when a folder has files of several years
only the newest year is read (the others are reported as ignored): mixing them would put the same
photo in train and test. COCO ships images in sub-folders named like the file (`train2014/`,
`val2014/`, ...); record file names include that sub-folder, and `fit_to_root` removes it again
when the image root turns out not to have it (all images in one flat folder).
"""

from __future__ import annotations

import re
from pathlib import Path

from captionkit.data.formats._common import RecordCollector, load_json
from captionkit.data.problems import MALFORMED_ROW, Problems
from captionkit.data.records import ImageRecord
from captionkit.errors import CaptionkitError

FILE_NAME = re.compile(r"^captions_(?P<part>[a-z]+)(?P<year>\d{4})\.json$")
SUB_FOLDER = re.compile(r"^[a-z]+\d{4}/")
UNSPLIT_FRACTIONS = (0.0, 0.5, 0.5)
"""How `load_dataset` splits the images of a val file: half val, half test."""
IGNORED_FILE = "ignored_file"


def looks_like(path: Path) -> bool:
    """True for a `.json` file whose name starts with `captions_`."""
    return path.suffix == ".json" and path.name.startswith("captions_")


def annotation_files(folder: Path) -> list[Path]:
    """The COCO caption files in a folder, sorted by name (train before val)."""
    return sorted(p for p in folder.iterdir() if p.is_file() and looks_like(p))


def read(path: Path, problems: Problems | None = None) -> list[ImageRecord]:
    """Read one annotation file, or all of those in a folder."""
    problems = problems if problems is not None else Problems()
    files = annotation_files(path) if path.is_dir() else [path]
    collector = RecordCollector(problems)
    for file in _newest_year(files, problems):
        _read_file(file, collector, problems)
    return collector.records()


def fit_to_root(records: list[ImageRecord], root: Path) -> None:
    """Drop the `train2014/`-style prefix of file names whose sub-folder is not under `root`."""
    present: dict[str, bool] = {}
    for record in records:
        match = SUB_FOLDER.match(record.filename)
        if match is None:
            continue
        folder = match.group()
        if folder not in present:
            present[folder] = (root / folder).is_dir()
        if not present[folder]:
            record.filename = record.filename[len(folder) :]


def _newest_year(files: list[Path], problems: Problems) -> list[Path]:
    years = {f: m["year"] if (m := FILE_NAME.match(f.name)) else "" for f in files}
    newest = max(years.values(), default="")
    for file, year in years.items():
        if year and year != newest:
            detail = f"not read: files of {newest} re-divide the same images"
            problems.add(IGNORED_FILE, file, detail)
    return [f for f in files if years[f] in ("", newest)]


def _read_file(path: Path, collector: RecordCollector, problems: Problems) -> None:
    data = load_json(path)
    for key in ("images", "annotations"):
        if not isinstance(data, dict) or not isinstance(data.get(key), list):
            raise CaptionkitError(f"{path}: missing field '{key}' (expected COCO caption JSON)")
    match = FILE_NAME.match(path.name)
    split = "train" if match and match["part"] == "train" else ""
    prefix = f"{match['part']}{match['year']}/" if match else ""
    names: dict[int | str, str] = {}
    for position, image in enumerate(data["images"]):
        file_name = image.get("file_name") if isinstance(image, dict) else None
        image_id = image.get("id") if isinstance(image, dict) else None
        if not isinstance(file_name, str) or not file_name.strip() or not _is_id(image_id):
            problems.add(MALFORMED_ROW, f"{path} (image entry {position})", "no 'id'/'file_name'")
            continue
        names[image_id] = prefix + file_name.strip()
        collector.add_image(names[image_id], f"{path} (image {file_name})", split)
    for position, annotation in enumerate(data["annotations"]):
        entry = annotation if isinstance(annotation, dict) else {}
        image_id, caption = entry.get("image_id"), entry.get("caption")
        name = names.get(image_id) if _is_id(image_id) else None
        if name is None or not isinstance(caption, str):
            detail = f"image_id {entry.get('image_id')!r} not in 'images', or no caption text"
            problems.add(MALFORMED_ROW, f"{path} (annotation {position})", detail)
            continue
        collector.add(name, caption, f"{path} (image {name.removeprefix(prefix)})", split)


def _is_id(value: object) -> bool:
    """COCO ids are integers; strings are accepted too (both can be dict keys)."""
    return isinstance(value, (int, str)) and not isinstance(value, bool)
