"""Dataset readers, format detection, errors and the vocabulary."""

import pytest

from captionkit.data import Vocabulary, load_dataset, tokenize
from captionkit.data.formats import assign_splits
from captionkit.data.records import ImageRecord
from captionkit.errors import CaptionkitError

from conftest import CAPTIONS


def test_kaggle_csv_reads_quoted_commas_and_makes_a_split(kaggle_dataset):
    ds = load_dataset(kaggle_dataset)
    assert [r.filename for r in ds.records] == list(CAPTIONS)
    assert ds.num_captions() == 8
    assert ds.records[0].captions == ["A dog runs, fast.", "a brown dog running"]
    assert sum(ds.split_sizes().values()) == 4
    assert ds.split_sizes()["val"] == 1 and ds.split_sizes()["test"] == 1
    assert ds.image_root == (kaggle_dataset / "Images").resolve()
    assert load_dataset(kaggle_dataset / "captions.txt").split_sizes() == ds.split_sizes()


def test_karpathy_json_uses_split_field(karpathy_dataset):
    ds = load_dataset(karpathy_dataset)
    assert ds.name == "tiny"
    assert [r.split for r in ds.records] == ["train", "train", "val", "test"]  # restval -> train
    assert ds.split_sizes() == {"train": 2, "val": 1, "test": 1}
    assert ds.path(ds.records[0]).is_file()


def test_split_file_wins_over_caption_list(karpathy_dataset, kaggle_dataset):
    # Both fixtures share tmp_path: the folder holds captions.txt and dataset_tiny.json.
    assert load_dataset(karpathy_dataset).source.name == "dataset_tiny.json"


def test_images_option_overrides_root(kaggle_dataset, tmp_path_factory):
    other = tmp_path_factory.mktemp("elsewhere")
    (kaggle_dataset / "Images").rename(other / "pics")
    assert load_dataset(kaggle_dataset, images=other / "pics").image_root == other / "pics"


def test_assign_splits_is_deterministic():
    def make():
        records = [ImageRecord(f"{i}.jpg", "") for i in range(100)]
        assign_splits(records)
        return [r.split for r in records]

    splits = make()
    assert splits == make()
    assert splits.count("val") == 10 and splits.count("test") == 10


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda p: p / "missing", "no such file or folder"),
        (lambda p: (p / "notes.txt").write_text("hello") and p, "unknown dataset format"),
        (
            lambda p: (p / "captions.txt").write_text("image,caption\n") and p,
            "no image with a caption",
        ),
        (
            lambda p: (p / "captions.txt").write_text("image,caption\nx.jpg,a dog\n") and p,
            "no images found",
        ),  # fmt: skip
        (lambda p: (p / "dataset_x.json").write_text("{not json") and p, "not a valid JSON"),
    ],
)
def test_bad_datasets_give_one_clear_error(tmp_path, setup, message):
    path = setup(tmp_path)
    with pytest.raises(CaptionkitError, match=message):
        load_dataset(path)


def test_missing_column_is_named(tmp_path):
    (tmp_path / "captions.txt").write_text("image,caption\n")
    (tmp_path / "other.csv").write_text("image,text\nx.jpg,a\n")
    from captionkit.data.formats import kaggle_csv

    with pytest.raises(CaptionkitError, match="missing column"):
        kaggle_csv.read(tmp_path / "other.csv")


def test_tokenize_and_vocabulary_round_trip():
    assert tokenize("A dog's ball, RED!") == ["a", "dog", "'s", "ball", "red"]
    vocab = Vocabulary.build(["a dog runs", "a dog sits", "a cat"], min_count=2)
    assert vocab.itos == ["<pad>", "<bos>", "<eos>", "<unk>", "a", "dog"]
    ids = vocab.encode("A dog jumps.")
    assert ids == [1, 4, 5, 3, 2]
    assert vocab.decode(ids) == "a dog <unk>"
    assert vocab.encode("a dog a dog", max_length=2) == [1, 4, 5, 2]
    assert Vocabulary.from_dict(vocab.to_dict()).itos == vocab.itos
