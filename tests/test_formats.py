"""Every caption format: detection, splits, bad input reported and skipped, and round trips."""

import json
from pathlib import Path

import pytest

from captionkit.data import load_dataset
from captionkit.data.convert import FORMATS, SPLIT_FORMATS, write_dataset
from captionkit.data.formats import apply_splits, detect_format, write_splits
from captionkit.data.problems import (
    BAD_ENCODING,
    DUPLICATE_CAPTION,
    EMPTY_CAPTION,
    IMAGE_WITHOUT_CAPTION,
    MALFORMED_ROW,
    Problems,
)
from captionkit.data.records import CaptionDataset, ImageRecord
from captionkit.errors import CaptionkitError

from conftest import write_images

NAMES = [f"img{i}.jpg" for i in range(6)]


def write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def wheres(dataset: CaptionDataset, kind: str) -> list[str]:
    return [p.where for p in dataset.problems.items if p.kind == kind]


def token_lines(names: list[str], per_image: int = 2) -> str:
    return "".join(f"{n}#{k}\tcaption {k} of {n}\n" for n in names for k in range(per_image))


# --- one test per format ------------------------------------------------------------------------


def test_flickr8k_token_with_official_split_lists(tmp_path):
    write_images(tmp_path / "Flicker8k_Dataset", NAMES)
    write(tmp_path / "Flickr8k.token.txt", token_lines(NAMES))
    # Same layout, lemmatised captions and one extra image: must never be read.
    write(tmp_path / "Flickr8k.lemma.token.txt", token_lines([*NAMES, "x.jpg"], per_image=3))
    write(tmp_path / "Flickr_8k.trainImages.txt", "img0.jpg\nimg1.jpg\nimg2.jpg\n")
    write(tmp_path / "Flickr_8k.devImages.txt", "img3.jpg\n")
    write(tmp_path / "Flickr_8k.testImages.txt", "img4.jpg\n")
    ds = load_dataset(tmp_path)
    assert ds.source.name == "Flickr8k.token.txt"
    assert len(ds.records) == 6 and ds.num_captions() == 12
    assert [r.split for r in ds.records[:5]] == ["train", "train", "train", "val", "test"]
    assert ds.records[5].split in ("train", "val", "test")  # in no list: deterministic split
    assert ds.records[0].captions == ["caption 0 of img0.jpg", "caption 1 of img0.jpg"]
    assert ds.path(ds.records[0]).is_file() and not ds.problems.items


def test_lemma_file_alone_is_not_a_caption_file(tmp_path):
    write(tmp_path / "Flickr8k.lemma.token.txt", token_lines(NAMES))
    with pytest.raises(CaptionkitError, match="unknown dataset format"):
        load_dataset(tmp_path)
    with pytest.raises(CaptionkitError, match="unknown dataset format"):
        load_dataset(tmp_path / "Flickr8k.lemma.token.txt")


def test_kaggle_captions_txt_with_quotes_and_bom(tmp_path):
    write_images(tmp_path / "Images", NAMES[:3])
    text = 'image,caption\nimg0.jpg,"A dog, running"\nimg0.jpg,a "quoted" word\nimg1.jpg,x\n'
    write(tmp_path / "captions.txt", b"\xef\xbb\xbf" + text.encode() + b"img2.jpg,y\n")
    ds = load_dataset(tmp_path)
    assert ds.records[0].captions == ["A dog, running", 'a "quoted" word']
    assert len(ds.records) == 3 and ds.num_captions() == 4
    assert sum(ds.split_sizes().values()) == 3


def test_flickr30k_results_csv_with_pipes_and_stray_spaces(tmp_path):
    write_images(tmp_path / "flickr30k_images", NAMES[:2])
    write(
        tmp_path / "results.csv",
        "image_name| comment_number| comment\n"
        "img0.jpg| 0| Two dogs play , in the grass .\n"
        'img0.jpg  | 1 |  A "quoted" dog | with a pipe\n'
        " img1.jpg| 0| A cat .\n",
    )
    ds = load_dataset(tmp_path)
    assert [r.filename for r in ds.records] == ["img0.jpg", "img1.jpg"]
    assert ds.records[0].captions == [
        "Two dogs play , in the grass .",
        'A "quoted" dog | with a pipe',
    ]
    assert ds.num_captions() == 3 and not ds.problems.items


def test_generic_csv_with_split_column(tmp_path):
    write_images(tmp_path / "images", NAMES)
    rows = ["train", "restval", "val", "dev", "test", ""]
    body = "".join(f"{n},a caption of {n},{s}\n" for n, s in zip(NAMES, rows))
    write(tmp_path / "captions.csv", "image,caption,split\n" + body + "img0.jpg,another\n")
    ds = load_dataset(tmp_path, split_fractions=(0, 0, 1))
    assert ds.num_captions() == 7
    assert [r.split for r in ds.records] == ["train", "train", "val", "val", "test", "test"]
    assert ds.split_sizes() == {"train": 2, "val": 2, "test": 2}


def test_jsonl_with_split(tmp_path):
    write_images(tmp_path / "Images", NAMES[:3])
    lines = [
        {"image": "img0.jpg", "caption": "a dog", "split": "train"},
        {"image": "img0.jpg", "caption": "a brown dog", "split": "train"},
        {"image": "img1.jpg", "caption": "a cat", "split": "val"},
        {"image": "img2.jpg", "caption": "a car", "split": "test"},
    ]
    write(tmp_path / "captions.jsonl", "".join(json.dumps(x) + "\n" for x in lines))
    ds = load_dataset(tmp_path)
    assert ds.num_captions() == 4
    assert ds.split_sizes() == {"train": 1, "val": 1, "test": 1}


def coco_file(path: Path, names: list[str], captions_per_image: int = 2) -> Path:
    images = [{"id": 100 + i, "file_name": n} for i, n in enumerate(names)]
    annotations = [
        {"id": k, "image_id": 100 + i, "caption": f"caption {k} of {n}"}
        for i, n in enumerate(names)
        for k in range(captions_per_image)
    ]
    return write(path, json.dumps({"images": images, "annotations": annotations}))


@pytest.mark.parametrize("year", ["2014", "2017"])
def test_coco_pair_in_annotations_folder_with_image_sub_folders(tmp_path, year):
    train = [f"COCO_train{year}_{i:012d}.jpg" for i in range(4)]
    val = [f"COCO_val{year}_{i:012d}.jpg" for i in range(4)]
    write_images(tmp_path / f"train{year}", train)
    write_images(tmp_path / f"val{year}", val)
    coco_file(tmp_path / "annotations" / f"captions_train{year}.json", train)
    coco_file(tmp_path / "annotations" / f"captions_val{year}.json", val)
    ds = load_dataset(tmp_path)
    assert ds.name == "coco" and ds.image_root == tmp_path.resolve()
    assert len(ds.records) == 8 and ds.num_captions() == 16
    assert ds.records[0].filename == f"train{year}/{train[0]}"
    assert all(ds.path(r).is_file() for r in ds.records)
    # Train file -> train; val file -> half val, half test.
    assert ds.split_sizes() == {"train": 4, "val": 2, "test": 2}


def test_coco_single_file_with_flat_images(tmp_path):
    write_images(tmp_path / "images", NAMES[:3])
    coco_file(tmp_path / "captions_val2017.json", NAMES[:3])
    ds = load_dataset(tmp_path / "captions_val2017.json")
    assert [r.filename for r in ds.records] == NAMES[:3]  # no val2017/ folder: prefix dropped
    assert ds.split_sizes()["train"] == 0 and all(ds.path(r).is_file() for r in ds.records)


def test_coco_years_are_not_mixed(tmp_path):
    write_images(tmp_path / "images", NAMES[:4])
    coco_file(tmp_path / "captions_train2014.json", NAMES[:4])
    coco_file(tmp_path / "captions_train2017.json", NAMES[:2])
    coco_file(tmp_path / "captions_val2017.json", NAMES[2:4])
    ds = load_dataset(tmp_path)
    assert len(ds.records) == 4 and ds.split_sizes()["train"] == 2
    assert wheres(ds, "ignored_file") == [str(tmp_path / "captions_train2014.json")]


def test_detection_prefers_files_with_splits(tmp_path):
    write(tmp_path / "captions.txt", "image,caption\na.jpg,x\n")
    write(tmp_path / "captions.jsonl", '{"image": "a.jpg", "caption": "x"}\n')
    assert detect_format(tmp_path)[0] == "kaggle_csv"
    write(tmp_path / "Flickr8k.token.txt", "a.jpg#0\tx\n")
    assert detect_format(tmp_path)[0] == "flickr8k_token"
    coco_file(tmp_path / "captions_val2014.json", ["a.jpg"])
    assert detect_format(tmp_path) == ("coco", tmp_path / "captions_val2014.json")
    write(tmp_path / "dataset_x.json", '{"images": []}')
    assert detect_format(tmp_path)[0] == "karpathy"


# --- bad caption input: reported, skipped, loading completes ------------------------------------


def test_empty_captions_in_line_and_json_formats(tmp_path):
    write_images(tmp_path / "Images", NAMES[:2])
    write(
        tmp_path / "t" / "Flickr8k.token.txt", "img0.jpg#0\ta dog\nimg0.jpg#1\t   \nimg1.jpg#0\tx\n"
    )
    ds = load_dataset(tmp_path / "t", images=tmp_path / "Images")
    assert wheres(ds, EMPTY_CAPTION) == [f"{tmp_path / 't' / 'Flickr8k.token.txt'}:2"]
    assert ds.num_captions() == 2
    path = tmp_path / "c" / "captions_train2014.json"
    images = [{"id": 1, "file_name": "img0.jpg"}, {"id": 2, "file_name": "img1.jpg"}]
    annotations = [{"image_id": 1, "caption": ""}, {"image_id": 2, "caption": "a cat"}]
    write(path, json.dumps({"images": images, "annotations": annotations}))
    ds = load_dataset(path, images=tmp_path / "Images")
    assert wheres(ds, EMPTY_CAPTION) == [f"{path} (image img0.jpg)"]
    assert wheres(ds, IMAGE_WITHOUT_CAPTION) == [f"{path} (image img0.jpg)"]
    assert [r.filename for r in ds.records] == ["img1.jpg"]


def test_bad_utf8_line_spoils_only_that_line(tmp_path):
    write_images(tmp_path / "Images", NAMES[:2])
    text = b"image,caption\nimg0.jpg,caf\xe9 au lait\nimg0.jpg,ok\nimg1.jpg,b\n"  # latin-1 byte
    write(tmp_path / "captions.txt", text)
    ds = load_dataset(tmp_path)
    assert wheres(ds, BAD_ENCODING) == [f"{tmp_path / 'captions.txt'}:2"]
    assert ds.records[0].captions == ["ok"] and ds.num_captions() == 2


def test_duplicate_captions_are_kept_once(tmp_path):
    write_images(tmp_path / "Images", NAMES[:1])
    write(tmp_path / "captions.txt", "image,caption\nimg0.jpg,a dog\nimg0.jpg, a dog \n")
    ds = load_dataset(tmp_path)
    assert ds.records[0].captions == ["a dog"]
    assert wheres(ds, DUPLICATE_CAPTION) == [f"{tmp_path / 'captions.txt'}:3"]


def test_image_without_caption_is_dropped(tmp_path):
    write_images(tmp_path / "Images", NAMES[:2])
    images = [
        {"filename": "img0.jpg", "split": "train", "sentences": [{"raw": "a dog"}]},
        {"filename": "img1.jpg", "split": "val", "sentences": []},
    ]
    path = write(tmp_path / "dataset_x.json", json.dumps({"images": images}))
    ds = load_dataset(tmp_path)
    assert [r.filename for r in ds.records] == ["img0.jpg"]
    assert wheres(ds, IMAGE_WITHOUT_CAPTION) == [f"{path} (image img1.jpg)"]


@pytest.mark.parametrize(
    ("name", "text", "bad_line"),
    [
        ("Flickr8k.token.txt", "img0.jpg#0\ta dog\nimg0.jpg#1 no tab\nimg1.jpg#0\tx\n", 2),
        ("Flickr8k.token.txt", "img0.jpg#0\ta dog\nimg0.jpg\ta dog\nimg1.jpg#0\tx\n", 2),
        ("results.csv", "image_name| comment_number| comment\nimg0.jpg| 0 a\nimg1.jpg| 0| x\n", 2),
        ("captions.txt", "image,caption\nimg1.jpg,x\n\nimg0.jpg\n", 4),
        ("captions.jsonl", '{"image": "img1.jpg", "caption": "x"}\n[1, 2]\n', 2),
        ("captions.jsonl", '{"image": "img1.jpg", "caption": "x"}\n{"image": "a"\n', 2),
    ],
)
def test_malformed_rows_are_reported(tmp_path, name, text, bad_line):
    write_images(tmp_path / "Images", NAMES[:2])
    write(tmp_path / name, text)
    ds = load_dataset(tmp_path)
    assert wheres(ds, MALFORMED_ROW) == [f"{tmp_path / name}:{bad_line}"]
    assert "img1.jpg" in [r.filename for r in ds.records]


@pytest.mark.parametrize(
    ("name", "text", "column"),
    [
        ("captions.csv", "image,text\nimg0.jpg,a dog\n", "caption"),
        ("captions.txt", "file,caption\nimg0.jpg,a dog\n", "image"),
        ("captions.jsonl", '{"image": "img0.jpg", "text": "a dog"}\n', "caption"),
    ],
)
def test_missing_column_is_fatal_and_named(tmp_path, name, text, column):
    write(tmp_path / name, text)
    with pytest.raises(CaptionkitError, match=f"{name}: missing column.*{column}"):
        load_dataset(tmp_path)


def test_nothing_usable_names_file_and_reason(tmp_path):
    write_images(tmp_path / "Images", NAMES[:1])
    write(tmp_path / "captions.txt", "image,caption\nimg0.jpg,\nimg0.jpg,  \n")
    with pytest.raises(
        CaptionkitError, match=r"captions.txt: no image with a caption.*empty_caption"
    ):
        load_dataset(tmp_path)


def test_strict_mode_raises_at_the_first_problem_with_the_file_named(tmp_path):
    write_images(tmp_path / "Images", NAMES[:2])
    write(tmp_path / "captions.txt", "image,caption\nimg0.jpg,a\nimg0.jpg,a\nimg1.jpg,b\n")
    assert load_dataset(tmp_path).num_captions() == 2
    with pytest.raises(CaptionkitError, match=r"captions.txt:3: duplicate caption.*--strict"):
        load_dataset(tmp_path, problems=Problems(strict=True))


# --- pinned splits and round trips --------------------------------------------------------------


def test_write_and_apply_splits_round_trip(tmp_path, kaggle_dataset):
    ds = load_dataset(kaggle_dataset)
    write_splits(ds, tmp_path / "splits.json")
    other = load_dataset(kaggle_dataset, split_seed=123, split_fractions=(0, 0, 1))
    assert other.split_sizes() == {"train": 0, "val": 0, "test": 4}
    assert apply_splits(other, tmp_path / "splits.json") == 4
    assert [r.split for r in other.records] == [r.split for r in ds.records]
    write(tmp_path / "part.json", json.dumps({ds.records[0].filename: "test"}))
    apply_splits(other, tmp_path / "part.json")  # images not in the file keep their split
    assert other.records[0].split == "test"
    assert [r.split for r in other.records[1:]] == [r.split for r in ds.records[1:]]
    write(tmp_path / "bad.json", json.dumps({"a.jpg": "holdout"}))
    with pytest.raises(CaptionkitError, match="bad.json"):
        apply_splits(other, tmp_path / "bad.json")


TRICKY = [
    "A dog runs, fast.",
    'a "quoted" word',
    "pipes | and #hashes",
    "café au lait, naïve",
    "  leading and trailing  ",
]


@pytest.fixture
def generated(tmp_path) -> CaptionDataset:
    names = [f"im{i:02d}.jpg" for i in range(10)]
    write_images(tmp_path / "Images", names)
    splits = ["train"] * 6 + ["val"] * 2 + ["test"] * 2
    records = [
        ImageRecord(n, s, [f"caption {k} of {n}" for k in range(i % 3 + 1)])
        for i, (n, s) in enumerate(zip(names, splits))
    ]
    records[0].captions += [c.strip() for c in TRICKY]
    return CaptionDataset("gen", tmp_path / "Images", records)


def caption_sets(dataset: CaptionDataset) -> dict[str, list[str]]:
    return {Path(r.filename).name: sorted(r.captions) for r in dataset.records}


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_every_format_round_trips(tmp_path, generated, fmt):
    out = write_dataset(generated, tmp_path / fmt, fmt)
    ds = load_dataset(out, images=generated.image_root)
    assert not ds.problems.items
    assert caption_sets(ds) == caption_sets(generated)
    splits = {Path(r.filename).name: r.split for r in ds.records}
    original = {Path(r.filename).name: r.split for r in generated.records}
    if fmt in SPLIT_FORMATS:
        assert splits == original
    elif fmt == "coco":  # train stays train; the held-out images are re-split into val/test
        train = {n for n, s in original.items() if s == "train"}
        assert {n for n, s in splits.items() if s == "train"} == train
        assert ds.split_sizes() == {"train": 6, "val": 2, "test": 2}
