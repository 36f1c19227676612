import json
from pathlib import Path

import numpy as np
import pytest

from conftest import section
from kdflow.core import KdflowError
from kdflow.core.prepared import load_prepared
from kdflow.data.sources import DataParams, RawData
from kdflow.data.split import prepare, split


def DataParams(**values):  # noqa: N802 - the `data` section, as prepare validates it
    return section("data", **values)


def synthetic_raw(n=300, classes=3):
    rng = np.random.default_rng(1)
    y = np.repeat(np.arange(classes), n // classes)
    return RawData(rng.uniform(size=(len(y), 4, 4, 1)).astype(np.float32), y)


def test_split_is_deterministic_stratified_and_disjoint():
    raw = synthetic_raw()
    cfg = DataParams(val_fraction=0.1, test_fraction=0.2)
    a, b = split(raw, cfg, seed=3), split(raw, cfg, seed=3)
    for name in ("train", "val", "test"):
        np.testing.assert_array_equal(a[name][0], b[name][0])
    assert {k: len(v[1]) for k, v in a.items()} == {"train": 210, "val": 30, "test": 60}
    for name, (_, y) in a.items():
        assert np.bincount(y).tolist() == [len(y) // 3] * 3, name  # stratified: equal class shares
    rows = [x.reshape(len(x), -1) for x, _ in a.values()]
    all_rows = np.concatenate(rows)
    assert len(np.unique(all_rows, axis=0)) == len(raw.y)  # every sample in exactly one split
    other = split(raw, cfg, seed=4)
    assert not np.array_equal(other["test"][0], a["test"][0])


def test_source_test_set_is_kept():
    raw = synthetic_raw()
    with_test = RawData(raw.x, raw.y, raw.x[:30], raw.y[:30])
    parts = split(with_test, DataParams(val_fraction=0.1, test_fraction=0.2), seed=0)
    np.testing.assert_array_equal(parts["test"][0], raw.x[:30])
    assert len(parts["val"][1]) == 30 and len(parts["train"][1]) == 270


def prepared_files(root):
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.joinpath("data/prepared").rglob("*"))
            if p.is_file()}


def test_prepare_mnist5k_writes_reproducible_uint8_shards(in_tmp):
    meta = prepare(DataParams(), seed=42)
    assert meta["num_classes"] == 10 and meta["input_shape"] == [28, 28, 1]
    assert meta["sizes"] == {"train": 3500, "val": 500, "test": 1000}
    first = prepared_files(in_tmp)
    prepare(DataParams(), seed=42)
    assert prepared_files(in_tmp) == first  # byte-identical: stable DVC hash
    assert sorted(first) == [f"data/prepared/{name}" for name in (
        "meta.json", "test/x-00000.npy", "test/y-00000.npy", "train/x-00000.npy", "train/y-00000.npy",
        "val/x-00000.npy", "val/y-00000.npy")]  # no temp files left
    # 8-bit digits are stored as 8 bits and read back as the float32 pixels the source gave
    stored = np.load(in_tmp / "data/prepared/train/x-00000.npy")
    assert stored.dtype == np.uint8 and stored.shape == (3500, 28, 28, 1)
    data = load_prepared()
    x, y = data.xy("train")
    assert x.dtype == np.float32 and 0.0 <= x[:].min() and x[:].max() <= 1.0
    np.testing.assert_array_equal(x[:], stored.astype(np.float32) / np.float32(255))
    assert json.loads((in_tmp / "data/prepared/meta.json").read_text()) == meta


def test_load_prepared_names_the_stage_to_rerun(in_tmp):
    with pytest.raises(KdflowError, match=r"run `dvc repro prepare` first"):
        load_prepared()
    prepare(DataParams(), seed=1)
    (in_tmp / "data/prepared/train/x-00000.npy").write_bytes(b"\x93NUMPY truncated")
    with pytest.raises(KdflowError, match=r"corrupt .*dvc repro --force prepare"):
        load_prepared()


def test_sharded_arrays_read_what_was_written_in_any_order(tmp_path, monkeypatch):
    """Many small shards: slices across shard borders, index arrays in any order; pixels are
    stored as uint8 only where that is exact."""
    from kdflow.core import shards
    from kdflow.core.shards import RowBlocks

    monkeypatch.setattr(shards, "SHARD_BYTES", 7 * 4 * 4)  # 7 rows of 4 float32 per shard
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(50, 4)).astype(np.float32) / np.float32(255)
    blocks = RowBlocks(pixels.shape, pixels.dtype, lambda: iter(np.array_split(pixels, 6)))
    assert shards.write(tmp_path / "a", "x", blocks, pixels=True) == [7] * 7 + [1]
    assert {np.load(f).dtype for f in (tmp_path / "a").glob("x-*.npy")} == {np.dtype(np.uint8)}
    array = shards.ShardedArray(tmp_path / "a", "x", pixels=True)
    assert array.shape == (50, 4) and len(array) == 50 and array.dtype == np.float32
    np.testing.assert_array_equal(array[:], pixels)
    np.testing.assert_array_equal(array[5:23], pixels[5:23])
    index = rng.permutation(50)[:17]
    np.testing.assert_array_equal(array[index], pixels[index])
    np.testing.assert_array_equal(array[np.array([-1, 0])], pixels[[-1, 0]])
    with pytest.raises(IndexError):
        array[np.array([50])]
    # one value that is not k/255 and the whole array stays float32, bit for bit
    pixels[33, 2] += np.float32(1e-3)
    shards.write(tmp_path / "b", "x", blocks, pixels=True)
    assert {np.load(f).dtype for f in (tmp_path / "b").glob("x-*.npy")} == {np.dtype(np.float32)}
    np.testing.assert_array_equal(shards.ShardedArray(tmp_path / "b", "x", pixels=True)[:], pixels)


def test_keras_dataset_offline_fails_fast_with_advice(in_tmp, monkeypatch):
    # No network here (and in CI): the download must fail with a one-line hint, not hang.
    import socket
    import time

    monkeypatch.setenv("KERAS_HOME", str(in_tmp / "keras_home"))
    monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **k: (_ for _ in ()).throw(socket.gaierror("offline")))
    start = time.monotonic()
    with pytest.raises(KdflowError, match=r"data.name=fashion_mnist: download failed .*mnist5k"):
        prepare(DataParams(name="fashion_mnist"), seed=0)
    assert time.monotonic() - start < 30
    assert not (in_tmp / "data/prepared").exists()


def test_prepare_holds_the_source_once_and_writes_what_a_plain_split_gives(in_tmp, monkeypatch):
    """prepare hashes and writes each split in blocks of rows: besides the source it holds one
    block, not a gathered split (NumPy's allocations are traced by tracemalloc)."""
    import tracemalloc

    import kdflow.core.prepared as data_module
    import kdflow.data.split as splits_module
    from kdflow.data.sources import encode_labels

    raw = synthetic_raw(n=6000)  # 6,000 x 4x4x1 float32 + labels, sorted by class
    raw = encode_labels(RawData(np.ascontiguousarray(np.tile(raw.x, (1, 8, 8, 1))), raw.y), "synthetic")  # 24 MiB
    monkeypatch.setattr(splits_module, "load", lambda cfg: raw)
    cfg = DataParams(val_fraction=0.1, test_fraction=0.2)
    tracemalloc.start()
    try:
        meta = prepare(cfg, seed=0)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 0.3 * raw.x.nbytes, peak  # a gathered train split alone would be 0.7 of it

    # The same rows and hash as the arrays gathered whole.
    parts = split(raw, cfg, seed=0)
    arrays = {f"{axis}_{name}": part[i] for name, part in parts.items() for i, axis in enumerate("xy")}
    assert meta["content_hash"] == data_module.content_hash(arrays)
    prepared = load_prepared()
    for key, value in arrays.items():
        np.testing.assert_array_equal(np.asarray(prepared.arrays[key]), value)


def small_npz() -> dict:
    """``digits.npz`` in the working directory: 300 8-bit 8x8 images of 3 classes; its `data` keys."""
    rng = np.random.default_rng(5)
    np.savez("digits.npz", x_train=rng.integers(0, 256, size=(300, 8, 8), dtype=np.uint8),
             y_train=np.repeat(np.arange(3), 100))
    return {"name": "npz", "path": "digits.npz"}


def test_labels_per_class_keeps_a_seeded_stratified_share_and_the_rest_become_images_without_labels(in_tmp):
    from kdflow.core.prepared import NO_LABEL

    source = small_npz()
    meta = prepare(DataParams(**source, labels_per_class=20), seed=42)
    assert meta["sizes"] == {"train": 60, "val": 30, "test": 60, "unlabeled": 150}
    data = load_prepared()
    assert np.bincount(data.xy("train")[1]).tolist() == [20] * 3
    first = prepared_files(in_tmp)
    prepare(DataParams(**source, labels_per_class=20), seed=42)
    assert prepared_files(in_tmp) == first  # seeded: byte-identical
    x, y = data.with_unlabeled().xy("train")
    assert len(x) == len(y) == 210 and (y[60:] == NO_LABEL).all() and (y[:60] >= 0).all()
    all_train, val = x[:].reshape(210, -1), data.xy("val")[0][:]
    prepare(DataParams(**source), seed=42)
    plain = load_prepared()
    np.testing.assert_array_equal(plain.xy("val")[0][:], val)  # val and test are untouched
    # the labelled and unlabelled images are together exactly the training split without the option
    assert sorted(map(bytes, all_train)) == sorted(map(bytes, plain.xy("train")[0][:].reshape(210, -1)))
    assert plain.unlabeled_count == 0 and plain.with_unlabeled() is plain
    prepare(DataParams(**source, labels_per_class=20), seed=43)
    assert not np.array_equal(load_prepared().xy("train")[0][:], data.xy("train")[0][:])


def test_images_without_labels_come_from_an_npz_or_a_folder_in_any_layout(in_tmp):
    from PIL import Image

    source = small_npz()
    rng = np.random.default_rng(0)
    pool = rng.integers(0, 256, size=(6, 8, 8), dtype=np.uint8)
    np.savez("pool.npz", x=pool)
    meta = prepare(DataParams(**source, unlabeled="pool.npz"), seed=1)
    assert meta["sizes"]["unlabeled"] == 6 and meta["sizes"]["train"] == 210
    extra = load_prepared().with_unlabeled().xy("train")[0]
    np.testing.assert_array_equal(extra[210:], pool[..., None].astype(np.float32) / np.float32(255))
    # a folder: nested, class-like folders mean nothing; RGB and other sizes become the data's
    for where in ("pool/a.png", "pool/sub/b.png", "pool/sub/deeper/c.jpg"):
        Path(where).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, size=(40, 30, 3), dtype=np.uint8)).save(where)
    Path("pool/notes.txt").write_text("not an image")
    meta = prepare(DataParams(**source, unlabeled="pool"), seed=1)
    assert meta["sizes"]["unlabeled"] == 3
    extra = load_prepared().with_unlabeled().xy("train")[0]
    assert extra.shape == (213, 8, 8, 1)
    # refused in one line each, and the prepared data is left as it was
    before = prepared_files(in_tmp)
    np.savez("wrong.npz", x=rng.integers(0, 256, size=(4, 10, 10, 3), dtype=np.uint8))
    np.savez("nox.npz", images=pool)
    Path("empty").mkdir()
    for path, message in (("wrong.npz", r"images of shape \(10, 10, 3\), the data's are \(8, 8, 1\)"),
                          ("nox.npz", r"no array 'x' \(has: images\)"),
                          ("empty", "the folder holds no images"),
                          ("missing.npz", "no such file or folder")):
        with pytest.raises(KdflowError, match=rf"^data.unlabeled = {path}: {message}"):
            prepare(DataParams(**source, unlabeled=path), seed=1)
    assert prepared_files(in_tmp) == before
