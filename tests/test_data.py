import json

import numpy as np
import pytest

from kdflow.data import RawData, load_prepared, prepare, split
from kdflow.errors import KdflowError
from kdflow.params import DataParams


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


def test_prepare_mnist5k_writes_reproducible_files(in_tmp):
    meta = prepare(DataParams(), seed=42)
    assert meta["num_classes"] == 10 and meta["input_shape"] == [28, 28, 1]
    assert meta["sizes"] == {"train": 3500, "val": 500, "test": 1000}
    first = (in_tmp / "data/prepared/data.npz").read_bytes()
    prepare(DataParams(), seed=42)
    assert (in_tmp / "data/prepared/data.npz").read_bytes() == first  # byte-identical: stable DVC hash
    data = load_prepared()
    x, y = data.xy("train")
    assert x.dtype == np.float32 and 0.0 <= x.min() and x.max() <= 1.0
    assert json.loads((in_tmp / "data/prepared/meta.json").read_text()) == meta
    assert list(in_tmp.joinpath("data/prepared").iterdir()).__len__() == 2  # no temp files left


def test_load_prepared_names_the_stage_to_rerun(in_tmp):
    with pytest.raises(KdflowError, match=r"run `dvc repro prepare` first"):
        load_prepared()
    prepare(DataParams(), seed=1)
    (in_tmp / "data/prepared/data.npz").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(KdflowError, match=r"unreadable .*dvc repro --force prepare"):
        load_prepared()


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
    import hashlib
    import io
    import tracemalloc
    import zipfile

    import kdflow.data as data_module
    from kdflow.io import RowBlocks, save_npz
    from kdflow.sources import encode_labels

    raw = synthetic_raw(n=6000)  # 6,000 x 4x4x1 float32 + labels, sorted by class
    raw = encode_labels(RawData(np.ascontiguousarray(np.tile(raw.x, (1, 8, 8, 1))), raw.y), "synthetic")  # 24 MiB
    monkeypatch.setattr(data_module, "load", lambda cfg: raw)
    cfg = DataParams(val_fraction=0.1, test_fraction=0.2)
    tracemalloc.start()
    try:
        meta = prepare(cfg, seed=0)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 0.3 * raw.x.nbytes, peak  # a gathered train split alone would be 0.7 of it

    # The same file and hash as the arrays gathered whole.
    parts = split(raw, cfg, seed=0)
    arrays = {f"{axis}_{name}": part[i] for name, part in parts.items() for i, axis in enumerate("xy")}
    save_npz(in_tmp / "whole.npz", **arrays)
    assert (in_tmp / "whole.npz").read_bytes() == (in_tmp / "data/prepared/data.npz").read_bytes()
    assert meta["content_hash"] == data_module.content_hash(arrays)
    # and what np.savez writes, member for member (a 0-d string array included)
    save_npz(in_tmp / "small.npz", {"a": RowBlocks.of(np.arange(6.0).reshape(2, 3))}, h=np.array("abc"))
    reference = io.BytesIO()
    np.savez(reference, a=np.arange(6.0).reshape(2, 3), h=np.array("abc"))
    with zipfile.ZipFile(in_tmp / "small.npz") as ours, zipfile.ZipFile(reference) as theirs:
        for name in ("a.npy", "h.npy"):
            assert hashlib.sha256(ours.read(name)).digest() == hashlib.sha256(theirs.read(name)).digest(), name
