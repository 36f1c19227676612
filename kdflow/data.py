"""Prepared data: the seeded stratified split of a source (see ``kdflow.sources``) and its files."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.model_selection import train_test_split

from kdflow.errors import KdflowError
from kdflow.io import load_npz, read_json, save_npz, write_json
from kdflow.params import DataParams
from kdflow.sources import RawData, load

PREPARED_DIR = Path("data/prepared")
SPLITS = ("train", "val", "test")


def split(raw: RawData, cfg: DataParams, seed: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Deterministic stratified train/val/test split; fractions are of the whole dataset.

    A source's own test set is kept as-is, and val is carved from its training part.
    """
    try:
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
    except ValueError as exc:  # scikit-learn: a split too small to hold every class
        raise KdflowError(
            f"data: {len(raw.y)} samples in {len(np.unique(raw.y))} classes are too few for "
            f"val_fraction={cfg.val_fraction:g} / test_fraction={cfg.test_fraction:g} "
            f"with every class in every split ({exc})"
        ) from None
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
    raw = load(cfg)
    parts = split(raw, cfg, seed)
    arrays = {}
    for name, (x, y) in parts.items():
        arrays[f"x_{name}"] = x
        arrays[f"y_{name}"] = y
    meta = {
        "dataset": cfg.name,
        "num_classes": len(raw.class_names),
        "class_names": list(raw.class_names),
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

    @property
    def class_names(self) -> list[str]:
        """The original label of each class id (as text), or the ids themselves."""
        return [str(c) for c in self.meta.get("class_names", range(self.num_classes))]


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
