"""Fuzzing (Hypothesis): random and hostile input to every dataset reader, the tokenizers, the
config and run-folder loaders and `POST /caption`. Every case must end in a `CaptionkitError` (an
HTTP 4xx for the service) or a result, never another exception, and no dataset may name an image
outside its folder. `make test` runs the quick profile; `make fuzz` the long one (conftest)."""

import contextlib
import json
import shutil
import string

import numpy as np
import pytest
from fastapi.testclient import TestClient
from hypothesis import assume, given
from hypothesis import strategies as st

from captionkit.data import load_dataset
from captionkit.data.tokenizers import build_tokenizer, tokenizer_from_dict
from captionkit.errors import CaptionkitError
from captionkit.models.run_folder import load_checkpoint
from captionkit.serving import Captioner
from captionkit.serving.app import create_app
from captionkit.serving.settings import ServeSettings
from captionkit.training.config import run_config_from_mapping

from conftest import write_images

# One valid annotation file of each kind the readers know (7: the Karpathy JSON, COCO, the
# Flickr8k token file, the Kaggle captions.txt / captions.csv, Flickr30k's results.csv, JSON lines).
VALID = {
    "dataset_flickr8k.json": json.dumps({"images": [
        {"filename": "a.jpg", "split": "train", "sentences": [{"raw": "a dog runs"}]},
        {"filename": "b.jpg", "split": "val", "sentences": [{"raw": "a cat sits"}]}]}),
    "captions_train2014.json": json.dumps({
        "images": [{"id": 1, "file_name": "a.jpg"}, {"id": 2, "file_name": "b.jpg"}],
        "annotations": [{"id": 5, "image_id": 1, "caption": "a dog runs"},
                        {"id": 6, "image_id": 2, "caption": "a cat sits"}]}),
    "Flickr8k.token.txt": "a.jpg#0\ta dog runs\nb.jpg#0\ta cat sits\n",
    "captions.txt": "image,caption\na.jpg,a dog runs\nb.jpg,\"a cat, sitting\"\n",
    "captions.csv": "image,caption,split\na.jpg,a dog runs,train\nb.jpg,a cat sits,val\n",
    "results.csv": "image_name| comment_number| comment\na.jpg| 0| a dog runs\nb.jpg| 0| a cat\n",
    "captions.jsonl": '{"image": "a.jpg", "caption": "a dog"}\n'
                      '{"image": "b.jpg", "caption": "x"}\n',
}  # fmt: skip

HOSTILE_NAMES = ["../a.jpg", "/etc/passwd", "a/../../b.jpg", "C:\\x.jpg", "a\x00.jpg", "..\\..\\a",
                 "", " ", "a.jpg/", "Images/../../a.jpg"]  # fmt: skip
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8),
                                                                        children, max_size=4),
    max_leaves=30,
)  # fmt: skip


def _mutations(text: str):
    """Strategies for a file that started as `text`: cut, bytes changed or inserted, names
    replaced by hostile ones, or random bytes altogether."""
    data = text.encode()
    cut = st.integers(0, len(data)).map(lambda n: data[:n])
    flipped = st.lists(st.tuples(st.integers(0, len(data) - 1), st.integers(0, 255)),
                       min_size=1, max_size=8).map(
        lambda edits: bytes(_edit(bytearray(data), edits)))  # fmt: skip
    inserted = st.tuples(st.integers(0, len(data)), st.text(min_size=1, max_size=30)).map(
        lambda t: data[: t[0]] + t[1].encode("utf-8", "surrogatepass") + data[t[0] :]
    )
    renamed = st.sampled_from(HOSTILE_NAMES).map(
        lambda name: text.replace("a.jpg", json.dumps(name)[1:-1] if text.lstrip().startswith(
            ("{", "[")) else name).encode("utf-8", "surrogatepass"))  # fmt: skip
    return cut | flipped | inserted | renamed | st.binary(max_size=300)


def _edit(data: bytearray, edits) -> bytearray:
    for i, value in edits:
        data[i] = value
    return data


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fuzz-images")
    write_images(folder, ["a.jpg", "b.jpg"], size=16)
    return folder


def _read(tmp_path_factory, image_folder, name: str, content: bytes):
    folder = tmp_path_factory.mktemp("fuzz-data")
    shutil.copytree(image_folder, folder / "Images")
    (folder / name).write_bytes(content)
    try:
        dataset = load_dataset(folder)
    except CaptionkitError:
        return
    root = (folder / "Images").resolve()
    for record in dataset.records:  # nothing outside the dataset's image folder
        assert dataset.path(record).resolve().is_relative_to(root), record.filename


@pytest.mark.parametrize("name", sorted(VALID))
@given(data=st.data())
def test_fuzz_dataset_readers(name, data, tmp_path_factory, image_folder):
    _read(tmp_path_factory, image_folder, name, data.draw(_mutations(VALID[name])))


deep_json = st.integers(1, 3000).map(lambda n: "[" * n + "]" * n)


@pytest.mark.parametrize("name", ["dataset_flickr8k.json", "captions_train2014.json",
                                  "captions.jsonl"])  # fmt: skip
@given(value=json_values.map(json.dumps) | deep_json)
def test_fuzz_json_readers_with_wrong_types_and_deep_nesting(name, value, tmp_path_factory,
                                                             image_folder):  # fmt: skip
    text = value if name.endswith(".json") else value + "\n" + value
    _read(tmp_path_factory, image_folder, name, text.encode())


def test_hostile_image_names_are_skipped_and_reported(tmp_path, image_folder):
    shutil.copytree(image_folder, tmp_path / "Images")
    unsafe = ["../a.jpg", "/etc/passwd", "a/../../b.jpg", "C:\\x.jpg", "..\\..\\a",
              "Images/../../a.jpg"]  # fmt: skip
    lines = "".join(f"{name}#0\ta caption\n" for name in unsafe)
    (tmp_path / "Flickr8k.token.txt").write_text(lines + "a.jpg#0\ta dog\n")
    dataset = load_dataset(tmp_path)
    assert [r.filename for r in dataset.records] == ["a.jpg"]
    reported = [p.detail for p in dataset.problems.items if p.kind == "unsafe_image_path"]
    assert len(reported) == len(unsafe)
    assert "image '../a.jpg': a '..' that leaves the image folder: skipped" in reported
    assert "image '/etc/passwd': an absolute path: skipped" in reported


@given(text=st.text(max_size=200))
def test_fuzz_tokenizers_encode_any_text(text):
    captions = ["a dog runs on the grass", "a cat sits on a mat", text]
    for kind, size in (("word", 0), ("bpe", 40)):
        tokenizer = build_tokenizer(kind, captions, min_count=1, vocab_size=size or 2000)
        ids = tokenizer.encode(text, 30)
        assert all(0 <= i < len(tokenizer) for i in ids) and len(ids) <= 32
        assert isinstance(tokenizer.decode(ids), str)


@given(value=json_values)
def test_fuzz_tokenizer_files(value):
    with contextlib.suppress(CaptionkitError):
        tokenizer_from_dict(value)


@given(value=json_values, key=st.sampled_from(["model", "model_args", "data", "optim", "train",
                                               "encoder", "scst"]))  # fmt: skip
def test_fuzz_config_files(value, key):
    with contextlib.suppress(CaptionkitError):
        run_config_from_mapping({key: value}, "c.yaml")


@pytest.fixture(scope="module")
def run_copy(tiny_attention_run, tmp_path_factory):
    return tiny_attention_run, json.loads((tiny_attention_run / "config.json").read_text())


@given(path=st.lists(st.sampled_from(["model", "config", "encoder", "vocabulary", "itos", "name",
                                      "hidden_dim", "embed_dim", "vocab_size", "type"]),
                     min_size=1, max_size=3),
       value=json_values | st.integers(-(2**63), 2**63) | st.just(10**12))  # fmt: skip
def test_fuzz_run_folder_config(path, value, run_copy, tmp_path_factory):
    source, config = run_copy
    folder = tmp_path_factory.mktemp("fuzz-run")
    shutil.copy(source / "model.safetensors", folder)
    node = config = json.loads(json.dumps(config))
    for key in path[:-1]:
        if not isinstance(node.get(key), dict):
            break
        node = node[key]
    else:
        node[path[-1]] = value
    (folder / "config.json").write_text(json.dumps(config))
    with contextlib.suppress(CaptionkitError):
        load_checkpoint(folder)


@pytest.fixture(scope="module")
def service(tiny_attention_run, lite0):
    captioner = Captioner(load_checkpoint(tiny_attention_run), lite0)
    settings = ServeSettings(max_wait_ms=0, max_upload_bytes=50_000, max_files=3)
    with TestClient(create_app(captioner, settings), raise_server_exceptions=False) as client:
        yield client


names = st.text(string.printable + "\x00é/\\.", max_size=30) | st.sampled_from(HOSTILE_NAMES)
form = st.dictionaries(
    st.sampled_from(["beam_size", "n_best", "attention", "rerank", "other"]),
    st.text(max_size=12) | st.integers(-5, 10**12).map(str),
    max_size=4,
)


@given(files=st.lists(st.tuples(names, st.binary(max_size=2000)), max_size=4), data=form)
def test_fuzz_caption_endpoint(service, files, data):
    assume(all("\x00" not in name for name, _ in files))  # not encodable in a multipart header
    fields = [("file", (name, content, "image/png")) for name, content in files]
    response = service.post("/caption", files=fields or None, data=data)
    assert 400 <= response.status_code < 500 or response.status_code == 200, response.text
    assert set(response.json()) >= ({"images"} if response.status_code == 200 else {"error"})
    if response.status_code == 200:
        assert len(response.json()["images"]) == len(files)
        assert np.all([isinstance(i["caption"], str) for i in response.json()["images"]])
