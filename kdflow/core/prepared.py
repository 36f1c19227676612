"""The prepared data, as every stage after `prepare` reads it: the splits written by
``kdflow.data.split.prepare`` as ``data/prepared/<split>/x-00000.npy, ...`` and ``y-...``
(``kdflow.core.shards``) with ``meta.json``."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from kdflow.core import KdflowError
from kdflow.core.io import read_json
from kdflow.core.paths import PREPARED_DIR, PREPARED_META
from kdflow.core.shards import RowBlocks, ShardedArray, as_bytes

SPLITS = ("train", "val", "test")
# The images without labels (data.unlabeled, data.labels_per_class): x shards only, used by the
# students that learn from the teacher alone on them. Their label in a training set is NO_LABEL.
UNLABELED = "unlabeled"
UNLABELED_IMAGES = f"x_{UNLABELED}"
NO_LABEL = -1
# The name of the teacher's logits among a student's targets, from its cache (kdflow.views.cache)
# to the loss (kdflow.training.objective: the teacher's labels; kdflow.distill: the soft term).
TEACHER_LOGITS = "teacher_logits"


def content_hash(arrays: Mapping[str, np.ndarray | RowBlocks]) -> str:
    digest = hashlib.sha256()
    for name in sorted(arrays):
        rows = arrays[name] if isinstance(arrays[name], RowBlocks) else RowBlocks.of(np.asarray(arrays[name]))
        digest.update(f"{name}:{rows.dtype.str}:{rows.shape}".encode())
        for block in rows.blocks():
            digest.update(as_bytes(block))
    return digest.hexdigest()


@dataclass(frozen=True)
class Prepared:
    meta: dict
    arrays: dict[str, np.ndarray | ShardedArray]  # x_<split>: images, y_<split>: class ids

    def xy(self, split_name: str) -> tuple[np.ndarray | ShardedArray, np.ndarray]:
        return self.arrays[f"x_{split_name}"], self.arrays[f"y_{split_name}"]

    @property
    def num_classes(self) -> int:
        return int(self.meta["num_classes"])

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.meta["input_shape"])

    @property
    def dataset(self) -> str:
        """The data.name it was prepared from."""
        return str(self.meta["dataset"])

    @property
    def unlabeled_count(self) -> int:
        return int(self.meta["sizes"].get(UNLABELED, 0))

    def with_unlabeled(self) -> "Prepared":
        """The same data whose training split is the labelled images followed by the images
        without labels (label NO_LABEL), read from disk as one array: what the teacher's cache
        covers and the distilled and pseudo-labelled students train on. Itself without any."""
        if not self.unlabeled_count:
            return self
        x, y = self.xy("train")
        extra = ShardedArray(PREPARED_DIR / UNLABELED, "x", pixels=True)
        joined = ShardedArray.joined(x, extra)
        labels = np.concatenate([y, np.full(len(extra), NO_LABEL, dtype=y.dtype)])
        sizes = {**self.meta["sizes"], "train": len(labels), UNLABELED: 0}
        return Prepared({**self.meta, "sizes": sizes}, {**self.arrays, "x_train": joined, "y_train": labels})

    @property
    def class_names(self) -> list[str]:
        """The original label of each class id (as text), or the ids themselves."""
        return [str(c) for c in self.meta.get("class_names", range(self.num_classes))]


def load_prepared(splits: tuple[str, ...] = SPLITS) -> Prepared:
    """The prepared splits (only those asked for), checked against meta.json: the images as
    ``ShardedArray``s (read from disk as needed), the labels in memory."""
    meta = read_json(PREPARED_META, produced_by="prepare")
    arrays = {}
    for name in splits:
        x = ShardedArray(PREPARED_DIR / name, "x", pixels=True)
        y = ShardedArray(PREPARED_DIR / name, "y")[:]
        if not len(x) == len(y) == meta["sizes"][name] or list(x.shape[1:]) != meta["input_shape"]:
            raise KdflowError(
                f"{PREPARED_DIR}: the {name} split does not match meta.json: rerun `dvc repro --force prepare`"
            )
        arrays[f"x_{name}"], arrays[f"y_{name}"] = x, y
    return Prepared(meta, arrays)
