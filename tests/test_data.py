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
