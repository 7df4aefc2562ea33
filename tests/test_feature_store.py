"""The feature store: incremental builds, superseded stores, resume, device and autocast; and its
faults: a full disk, two extractions into one cache at once, a killed extraction."""

import errno
import json
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from captionkit.cli import main
from captionkit.data.files import write_atomically
from captionkit.encoders import (
    BuildReport,
    ImageEncoder,
    create_encoder,
    extract_features,
    features,
    reuse,
)
from captionkit.errors import CaptionkitError

from conftest import process_state, run_captionkit, start_captionkit, write_images


@pytest.fixture
def calls(monkeypatch):
    """Batch sizes of every forward pass of any encoder (the grid-size probe included)."""
    seen = []
    forward = ImageEncoder.forward

    def counting(self, images):
        seen.append(len(images))
        return forward(self, images)

    monkeypatch.setattr(ImageEncoder, "forward", counting)
    return seen


def images(folder, n):
    write_images(folder, [f"{i}.png" for i in range(n)])
    return sorted(folder.iterdir(), key=lambda p: int(p.stem))


def change(path, seed=9):
    """New pixels and a new mtime (the size of a noise PNG may stay the same)."""
    write_images(path.parent, [path.name], seed=seed)
    os.utime(path, ns=(10**9 * seed, 10**9 * seed))


def extract(encoder, paths, cache, **kwargs):
    return extract_features(encoder, paths, cache, num_workers=0, device="cpu", **kwargs)


def test_a_changed_image_is_the_only_one_extracted(tmp_path, lite0, calls):
    paths = images(tmp_path / "img", 5)
    old = extract(lite0, paths, tmp_path / "cache")
    assert old.report == BuildReport(reused=0, extracted=5)
    old_pooled, old_grid = np.array(old.pooled), np.array(old.grid)

    change(paths[2])
    calls.clear()
    new = extract(lite0, paths, tmp_path / "cache")
    assert calls == [1]  # the changed image only; the donor gave the grid size, no probe
    assert (new.report.reused, new.report.extracted, new.report.removed) == (4, 1, [])
    same = [0, 1, 3, 4]
    np.testing.assert_array_equal(new.pooled[same], old_pooled[same])
    np.testing.assert_array_equal(new.grid[same], old_grid[same])
    alone = extract(lite0, [paths[2]], tmp_path / "alone")  # the new file, from scratch
    np.testing.assert_array_equal(new.pooled[2], alone.pooled[0])
    np.testing.assert_array_equal(new.grid[2], alone.grid[0])
    assert np.abs(new.pooled[2].astype(np.float32) - old_pooled[2]).max() > 0.1
    assert old.folder.is_dir()  # it holds the old version of 2.png: not superseded


def test_added_images_are_extracted_and_superseded_stores_removed(
    tmp_path, lite0, calls, monkeypatch
):
    paths = images(tmp_path / "img", 4)
    write_images(tmp_path / "other", ["9.png"], seed=3)
    cache = tmp_path / "cache"
    first = extract(lite0, paths[:3], cache)
    first_pooled, first_grid = np.array(first.pooled), np.array(first.grid)
    other = extract(lite0, [paths[0], tmp_path / "other" / "9.png"], cache)
    assert (other.report.reused, other.report.extracted) == (1, 1)

    monkeypatch.setattr(reuse, "COPY_CHUNK_BYTES", 1)  # one row per copy: the chunked path
    calls.clear()
    full = extract(lite0, paths, cache)
    assert calls == [1] and (full.report.reused, full.report.extracted) == (3, 1)
    np.testing.assert_array_equal(full.pooled[:3], first_pooled)
    np.testing.assert_array_equal(full.grid[:3], first_grid)
    # `first` only had images that `full` now holds unchanged; `other` has 9.png: kept.
    assert full.report.removed == [first.folder.name]
    assert not first.folder.exists() and other.folder.is_dir()

    calls.clear()
    again = extract(lite0, paths[:3], cache)  # the removed store's image list: all copied
    assert calls == [] and (again.report.reused, again.report.extracted) == (3, 0)
    assert again.folder == first.folder and full.folder.is_dir()
    np.testing.assert_array_equal(again.grid, first_grid)
    assert sorted(p.name for p in cache.iterdir()) == sorted(
        [first.folder.name, other.folder.name, full.folder.name]
    )  # no .partial or superseded folder left behind


def test_other_weights_grid_setting_or_autocast_never_reuse_rows(tmp_path, lite0, calls):
    paths = images(tmp_path / "img", 3)
    cache = tmp_path / "cache"
    base = extract(lite0, paths, cache)
    with pytest.warns(UserWarning, match="random weights"):
        random_lite0 = create_encoder(weights="none")  # same name, other weights
    calls.clear()
    stores = [
        extract(random_lite0, paths, cache),
        extract(lite0, paths, cache, grid=False),
        extract(lite0, paths, cache, amp="bf16"),
    ]
    assert calls == [1, 3] * 3  # the grid-size probe and all images, every time
    for store in stores:
        assert (store.report.reused, store.report.extracted, store.report.removed) == (0, 3, [])
    assert len({base.folder, *(s.folder for s in stores)}) == 4
    assert all(s.folder.is_dir() for s in [base, *stores])


class SimulatedCrash(Exception):
    pass


def test_interrupted_incremental_extraction_resumes(tmp_path, lite0, monkeypatch):
    paths = images(tmp_path / "img", 8)
    cache = tmp_path / "cache"
    old = extract(lite0, paths[:5], cache, batch_size=2)
    change(paths[1])  # to extract: 1 (changed), 5, 6, 7 (new); 0, 2, 3, 4 are copied

    calls = []
    forward = ImageEncoder.forward

    def failing_forward(self, images):
        calls.append(len(images))
        if len(calls) == 2:
            raise SimulatedCrash  # as if the process died during the second batch
        return forward(self, images)

    monkeypatch.setattr(ImageEncoder, "forward", failing_forward)
    with pytest.raises(SimulatedCrash):
        extract(lite0, paths, cache, batch_size=2)
    assert len(list(cache.glob("*.partial"))) == 1 and old.folder.is_dir()
    calls.clear()
    store = extract(lite0, paths, cache, batch_size=2)
    assert calls == [2]  # only the last batch was left
    assert store.report == BuildReport(reused=0, extracted=2, resumed=6)
    assert not list(cache.glob("*.partial"))
    copied = [0, 2, 3, 4]
    np.testing.assert_array_equal(store.grid[copied], old.grid[copied])
    monkeypatch.setattr(ImageEncoder, "forward", forward)
    clean = extract(lite0, paths, tmp_path / "clean", batch_size=2)
    # Other batch compositions: equal up to the float16 storage rounding (values reach ~6).
    np.testing.assert_allclose(store.grid, clean.grid, atol=1e-2, rtol=1e-2)
    np.testing.assert_allclose(store.pooled, clean.pooled, atol=1e-2, rtol=1e-2)


def test_an_unchanged_unreadable_image_is_not_retried(tmp_path, lite0, monkeypatch):
    write_images(tmp_path, ["ok.png", "new.png"])
    (tmp_path / "text.jpg").write_text("this is not an image")
    paths = [tmp_path / "ok.png", tmp_path / "text.jpg", tmp_path / "missing.jpg"]
    first = extract(lite0, paths, tmp_path / "cache")
    decoded = []
    open_or_problem = features.open_or_problem
    monkeypatch.setattr(
        features, "open_or_problem", lambda p: decoded.append(p.name) or open_or_problem(p)
    )
    second = extract(lite0, [*paths, tmp_path / "new.png"], tmp_path / "cache")
    assert decoded == ["new.png"]
    assert (second.report.reused, second.report.extracted) == (3, 1)
    assert second.failed == first.failed and len(first.failed) == 2
    assert second.has(tmp_path / "new.png") and second.has(paths[0])


def test_failures_recorded_before_a_crash_survive_the_resume(tmp_path, lite0, monkeypatch):
    write_images(tmp_path, ["0.png", "2.png", "3.png"])
    (tmp_path / "1.jpg").write_text("this is not an image")
    paths = [tmp_path / n for n in ("0.png", "1.jpg", "2.png", "3.png")]
    forward, calls = ImageEncoder.forward, []

    def failing_forward(self, images):
        calls.append(len(images))
        if len(calls) == 3:  # the grid-size probe, the first batch, then the second: a crash
            raise SimulatedCrash
        return forward(self, images)

    monkeypatch.setattr(ImageEncoder, "forward", failing_forward)
    with pytest.raises(SimulatedCrash):
        extract(lite0, paths, tmp_path / "cache", batch_size=2)
    decoded = []
    open_or_problem = features.open_or_problem
    monkeypatch.setattr(
        features, "open_or_problem", lambda p: decoded.append(p.name) or open_or_problem(p)
    )
    store = extract(lite0, paths, tmp_path / "cache", batch_size=2)
    assert decoded == ["2.png", "3.png"]  # the first batch, with its failure, is not redone
    assert list(store.failed) == [str(paths[1].resolve())]
    assert store.has(paths[0]) and store.has(paths[3]) and not store.has(paths[1])


def test_the_failure_log_appends_and_skips_a_line_cut_short(tmp_path):
    log = tmp_path / "failed.json"
    log.write_text(json.dumps({"a.jpg": ["missing_image", "no file"]}))  # as earlier versions
    reuse.append_failures(log, {"b.jpg": ["unreadable_image", "broken"]})
    with open(log, "a") as f:
        f.write('{"c.jpg": ["missing_im')  # a crash in the middle of an append
    reuse.append_failures(log, {"d.jpg": ["missing_image", "no file"]})
    assert reuse.read_failures(log) == {
        "a.jpg": ["missing_image", "no file"],
        "b.jpg": ["unreadable_image", "broken"],
        "d.jpg": ["missing_image", "no file"],
    }
    assert reuse.read_failures(tmp_path / "none.json") == {}


def test_bf16_autocast_on_cpu_is_close_to_float32(tmp_path, lite0):
    paths = images(tmp_path / "img", 4)
    fp32 = extract(lite0, paths, tmp_path / "cache")
    bf16 = extract(lite0, paths, tmp_path / "cache", amp="bf16")
    assert bf16.folder != fp32.folder  # autocast stores are kept apart
    # Measured for EfficientNet-Lite0 on these images: relative L2 error per image up to 0.035
    # (pooled) and 0.085 (grid), cosine >= 0.997; float16 storage alone rounds to ~0.0005.
    for name, bound in (("pooled", 0.06), ("grid", 0.15)):
        a = np.asarray(getattr(fp32, name), np.float32)
        b = np.asarray(getattr(bf16, name), np.float32)
        error = np.linalg.norm(a - b, axis=-1) / np.linalg.norm(a, axis=-1)
        assert 0 < error.max() < bound, (name, error.max())  # > 0: autocast really ran


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_extraction_agrees_with_cpu(tmp_path, lite0):
    paths = images(tmp_path / "img", 6)
    cpu = extract(lite0, paths, tmp_path / "cpu")
    gpu = extract_features(lite0, paths, tmp_path / "gpu", num_workers=0, device="cuda")
    np.testing.assert_allclose(gpu.grid, cpu.grid, atol=1e-2, rtol=1e-2)  # no TF32 in float32
    assert next(lite0.parameters()).device.type == "cpu"  # moved back
    for amp in ("bf16", "fp16"):
        a = extract_features(lite0, paths, tmp_path / amp, device="cuda", amp=amp)
        error = np.linalg.norm(np.float32(a.pooled) - cpu.pooled, axis=-1)
        assert (error / np.linalg.norm(np.float32(cpu.pooled), axis=-1)).max() < 0.06


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"device": "tpu"}, "--device tpu: expected auto, cpu, cuda or cuda:N"),
        ({"device": "cpu", "amp": "int8"}, "--amp int8: expected none, bf16 or fp16"),
        ({"device": "cpu", "amp": "fp16"}, "--amp fp16 needs a CUDA device"),
    ]
    + ([] if torch.cuda.is_available() else [({"device": "cuda"}, "no CUDA device")]),
)
def test_bad_device_or_amp_is_one_clear_error(tmp_path, lite0, options, message):
    with pytest.raises(CaptionkitError, match=message):
        extract_features(lite0, [tmp_path / "a.png"], tmp_path / "cache", **options)
    assert not (tmp_path / "cache").exists()


def test_extract_command_reports_reused_and_extracted(kaggle_dataset, tmp_path, capsys):
    argv = ["extract", "--data", str(kaggle_dataset), "--cache-dir", str(tmp_path / "cache")]
    argv += ["--workers", "0", "--device", "cpu"]
    assert main(argv) == 0
    assert "reused 0 unchanged images from older stores, extracted 4" in capsys.readouterr().out
    assert main(argv) == 0
    assert "all images were already cached" in capsys.readouterr().out
    change(kaggle_dataset / "Images" / "b.jpg")
    assert main(argv) == 0
    assert "reused 3 unchanged images from older stores, extracted 1" in capsys.readouterr().out
    assert main([*argv, "--amp", "fp16"]) == 1
    assert "error: --amp fp16 needs a CUDA device" in capsys.readouterr().err


# --- integrity: checked on every open, verified and repaired on request ------------------------


def _flip_byte(path, row_bytes_at):
    with open(path, "r+b") as f:
        f.seek(row_bytes_at)
        byte = f.read(1)
        f.seek(row_bytes_at)
        f.write(bytes([byte[0] ^ 0xFF]))


def test_a_truncated_or_foreign_store_is_built_again(tmp_path, lite0, calls, caplog):
    paths = images(tmp_path / "img", 5)
    first = extract(lite0, paths, tmp_path / "cache")
    pooled, grid = np.array(first.pooled), np.array(first.grid)
    grid_file = first.folder / "grid.npy"
    with open(grid_file, "r+b") as f:
        f.truncate(grid_file.stat().st_size // 2)
    calls.clear()
    again = extract(lite0, paths, tmp_path / "cache")
    assert again.report == BuildReport(reused=0, extracted=5) and sum(calls) == 5 + 1
    assert "grid.npy" in caplog.text and "instead of" in caplog.text
    assert np.array_equal(again.pooled, pooled) and np.array_equal(again.grid, grid)
    # A store of another format version (an older captionkit) is never read either.
    index_file = again.folder / "index.json"
    index = json.loads(index_file.read_text())
    del index["format_version"]
    index_file.write_text(json.dumps(index))
    with pytest.raises(CaptionkitError, match="feature store of format 1, written by another"):
        features.FeatureStore.open(again.folder)
    assert extract(lite0, paths, tmp_path / "cache").report.extracted == 5


def test_a_truncated_store_never_gives_rows_to_a_new_one(tmp_path, lite0):
    paths = images(tmp_path / "img", 4)
    old = extract(lite0, paths[:3], tmp_path / "cache")
    with open(old.folder / "pooled.npy", "r+b") as f:
        f.truncate(200)
    assert extract(lite0, paths, tmp_path / "cache").report.reused == 0


def test_verify_finds_flipped_bytes_and_extracts_only_their_block(tmp_path, lite0, calls,
                                                                  monkeypatch):  # fmt: skip
    from captionkit.encoders import integrity
    from captionkit.encoders.verify import verify_store

    monkeypatch.setattr(integrity, "BLOCK_ROWS", 2)  # 7 images: blocks of rows 0-1, 2-3, 4-5, 6
    paths = images(tmp_path / "img", 7)
    store = extract(lite0, paths, tmp_path / "cache")
    pooled, grid = np.array(store.pooled), np.array(store.grid)
    header = store.pooled.offset  # .npy header bytes before the data
    _flip_byte(store.folder / "pooled.npy", header + 5 * store.pooled[0].nbytes + 3)  # row 5
    _flip_byte(store.folder / "grid.npy", store.grid.offset + 10)  # row 0
    damaged = features.FeatureStore.open(store.folder)  # same sizes: opens
    assert not np.array_equal(damaged.pooled, pooled)
    calls.clear()
    report = verify_store(damaged, lite0, num_workers=0, device="cpu")
    assert report.damaged_rows == [0, 1, 4, 5] and report.blocks == 4
    assert calls == [4]  # only those rows went through the encoder
    assert "2 damaged, 4 rows extracted again" in report.summary()
    mended = features.FeatureStore.open(store.folder)
    assert np.array_equal(mended.pooled, pooled) and np.array_equal(mended.grid, grid)
    assert verify_store(mended, lite0, num_workers=0, device="cpu").damaged_rows == []
    assert sorted(p.name for p in store.folder.iterdir()) == ["grid.npy", "index.json",
                                                              "pooled.npy"]  # fmt: skip


def test_extract_verify_command(kaggle_dataset, tmp_path, capsys):
    argv = ["extract", "--data", str(kaggle_dataset), "--cache-dir", str(tmp_path / "cache"),
            "--workers", "0", "--device", "cpu", "--verify"]  # fmt: skip
    assert main(argv) == 0
    assert "verified 1 blocks of 64 rows: all intact" in capsys.readouterr().out


@pytest.mark.slow
def test_extract_under_torchrun_shares_the_images_and_makes_one_process_store(
    kaggle_dataset, tmp_path, lite0
):
    import subprocess
    import sys

    cache = tmp_path / "cache"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "captionkit", "extract", "--data", str(kaggle_dataset), "--cache-dir",
           str(cache), "--workers", "0", "--device", "cpu"]  # fmt: skip
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    # Each rank extracted 2 of the 4 images; rank 0 copied them all into the one store and
    # removed the two shard stores.
    assert done.stdout.count("reused 4 unchanged images from older stores, extracted 0") == 1
    assert "removed 2 superseded stores" in done.stdout
    (folder,) = [f for f in cache.iterdir() if not f.name.endswith(".partial")]
    shared = features.FeatureStore.open(folder)
    alone = extract(lite0, [Path(p) for p in shared.paths], tmp_path / "alone")
    # Equal up to float16 rounding (batches of 2 and of 4 take other convolution paths).
    assert np.allclose(shared.pooled, alone.pooled, rtol=2e-3, atol=1e-3)
    assert np.allclose(shared.grid, alone.grid, rtol=2e-3, atol=1e-3)


# --- faults: a full disk, two extractions at once, SIGKILL -------------------------------------


def _extract_args(dataset: Path, cache: Path) -> list:
    """`captionkit extract` of `dataset` into `cache`: batches of 2 images (forward passes: the
    grid-size probe, then 2 and 2 for the 4 images of `kaggle_dataset`)."""
    return ["extract", "--data", dataset, "--cache-dir", cache, "--workers", "0", "--device",
            "cpu", "--batch-size", "2"]  # fmt: skip


def _complete_stores(cache: Path) -> list[Path]:
    return [f for f in cache.iterdir() if not f.name.endswith(".partial")]


def _disk_full_at(where: str, monkeypatch) -> None:
    """From now on the disk is full: when the store's array files get their blocks ("reserve",
    before any image is extracted), or when its index is written ("index", after all of them),
    which then stops half-way."""
    if where == "reserve":

        def full(fd, offset, length):
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(os, "posix_fallocate", full)
        return

    def half_then_full(path, data, **options):
        def writer(tmp):
            Path(tmp).write_text(json.dumps(data)[:100])
            raise OSError(errno.ENOSPC, "No space left on device")

        write_atomically(path, writer)

    monkeypatch.setattr(features, "write_json_atomically", half_then_full)


@pytest.mark.parametrize("where", ["reserve", "index"])
def test_a_full_disk_stops_extract_with_one_error_and_no_trusted_store(
    kaggle_dataset, tmp_path, calls, monkeypatch, capsys, where
):
    """Out of space when the arrays get their blocks: one error, before the encoder sees an image
    (a memory map over a sparse file would have died of SIGBUS at the first row the disk lacked).
    Out of space for the index, after every image: one error, no store that a later run opens;
    once there is room, the run again goes on from the rows done (none extracted again)."""
    argv = [str(a) for a in _extract_args(kaggle_dataset, tmp_path / "cache")]
    with monkeypatch.context() as full:
        _disk_full_at(where, full)
        assert main(argv) == 1
    err = capsys.readouterr().err  # the progress bar's lines, then one error
    errors = [line for line in err.splitlines() if line.startswith("error")]
    assert len(errors) == 1 and err.strip().splitlines()[-1] == errors[0]
    assert "No space left on device" in errors[0]
    assert _complete_stores(tmp_path / "cache") == []
    if where == "reserve":
        assert "the store takes" in errors[0] and "Make room and run again" in errors[0]
        assert 2 not in calls  # no batch of images went through the encoder
    calls.clear()
    assert main(argv) == 0
    again = capsys.readouterr().out
    if where == "index":
        assert calls == [1]  # the grid-size probe only: every row was done
        assert "extracted 0, 4 done by an interrupted earlier run" in again
    (store,) = _complete_stores(tmp_path / "cache")
    assert len(features.FeatureStore.open(store).paths) == 4


@pytest.mark.slow
def test_two_extractions_into_one_cache_make_one_store(kaggle_dataset, tmp_path, lite0):
    """The first stops (SIGSTOP) at its first batch, holding the store's build lock; the second
    then waits on that lock (seen in /proc/locks) and, once the first has finished, finds the
    store complete and extracts nothing. One store, no partial one, the features of a plain
    extraction."""
    args = _extract_args(kaggle_dataset, tmp_path / "cache")
    first = start_captionkit(args, tmp_path / "first.log", "STOP forward 2")
    second = None
    try:
        _wait_for(lambda: process_state(first.pid) == "T", "the first to stop at its batch")
        second = start_captionkit(args, tmp_path / "second.log")
        _wait_for(lambda: _waits_for_a_lock(second.pid), "the second to wait for the lock")
        first.send_signal(signal.SIGCONT)
        codes = [first.wait(timeout=300), second.wait(timeout=300)]
    finally:
        for process in (first, second):
            if process is not None:
                process.kill()
    outputs = [(tmp_path / f"{n}.log").read_text() for n in ("first", "second")]
    assert codes == [0, 0], outputs
    assert "reused 0 unchanged images from older stores, extracted 4" in outputs[0]
    assert "all images were already cached" in outputs[1]
    (folder,) = list((tmp_path / "cache").iterdir())
    shared = features.FeatureStore.open(folder)
    alone = extract(lite0, [Path(p) for p in shared.paths], tmp_path / "alone", batch_size=2)
    # Equal up to float16 rounding (this process may compute with more threads).
    np.testing.assert_allclose(shared.pooled, alone.pooled, atol=1e-2, rtol=1e-2)
    np.testing.assert_allclose(shared.grid, alone.grid, atol=1e-2, rtol=1e-2)


def _waits_for_a_lock(pid: int) -> bool:
    """Whether process `pid` is blocked on a file lock ("->" lines of /proc/locks)."""
    return any(line.split()[1] == "->" and line.split()[5] == str(pid)
               for line in Path("/proc/locks").read_text().splitlines())  # fmt: skip


def _wait_for(condition, what: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


@pytest.mark.slow
def test_a_killed_extraction_extracts_only_what_is_missing(kaggle_dataset, tmp_path, calls,
                                                            capsys):  # fmt: skip
    """SIGKILL as the second batch starts (the first, 2 images, is done): the run again extracts
    the 2 others only."""
    args = _extract_args(kaggle_dataset, tmp_path / "cache")
    code, output = run_captionkit(args, tmp_path / "killed.log", "KILL forward 3")
    assert code == -signal.SIGKILL, output[-3000:]
    assert _complete_stores(tmp_path / "cache") == []
    assert main([str(a) for a in args]) == 0
    assert calls == [1, 2]  # the grid-size probe, then the second batch
    assert "extracted 2, 2 done by an interrupted earlier run" in capsys.readouterr().out
