"""The seeded stratified split of a dataset source and the prepared files it writes (read back by
``kdflow.core.prepared``): the `prepare` stage's work."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import numpy as np
from sklearn.model_selection import train_test_split

from kdflow.core import KdflowError
from kdflow.core.io import atomic_dir, write_json
from kdflow.core.paths import PREPARED_DIR, PREPARED_META
from kdflow.core.prepared import SPLITS, content_hash
from kdflow.core.shards import RowBlocks
from kdflow.core.shards import write as write_shards
from kdflow.data.sources import DataParams, RawData, load

BLOCK_BYTES = 2**21  # prepare gathers, hashes and writes a split in blocks of about this size


def split_indices(raw: RawData, data: DataParams, seed: int) -> dict[str, np.ndarray | None]:
    """Deterministic stratified train/val/test split of the sample indices; fractions are of
    the whole dataset. A source's own test set is kept as-is (index None), and val is carved
    from its training part."""
    try:
        if raw.x_test is None:
            rest, test = train_test_split(np.arange(len(raw.y)), test_size=data.test_fraction, stratify=raw.y,
                                          random_state=seed)
            val_size = data.val_fraction / (1.0 - data.test_fraction)
        else:
            rest, test = np.arange(len(raw.y)), None
            val_size = data.val_fraction
        train, val = train_test_split(rest, test_size=val_size, stratify=raw.y[rest], random_state=seed)
    except ValueError as exc:  # scikit-learn: a split too small to hold every class
        raise KdflowError(
            f"data: {len(raw.y)} samples in {len(np.unique(raw.y))} classes are too few for "
            f"val_fraction={data.val_fraction:g} / test_fraction={data.test_fraction:g} "
            f"with every class in every split ({exc})"
        ) from None
    return {"train": train, "val": val, "test": test}


class SplitArrays(Mapping):
    """x_<split> and y_<split> of each split, gathered from the source when read."""

    def __init__(self, raw: RawData, indices: dict[str, np.ndarray | None]):
        self.raw, self.indices = raw, indices

    def _source(self, key: str) -> tuple[np.ndarray, np.ndarray | None]:
        axis, _, name = key.partition("_")
        index = self.indices[name]
        if index is None:
            return (self.raw.x_test if axis == "x" else self.raw.y_test), None
        return (self.raw.x if axis == "x" else self.raw.y), index

    def __getitem__(self, key: str) -> np.ndarray:
        source, index = self._source(key)
        return source if index is None else source[index]

    def rows(self, key: str) -> RowBlocks:
        """The same array as blocks of about BLOCK_BYTES: prepare hashes and writes each
        split without gathering it whole, so it holds the source and a block or two, not a
        second copy of the dataset."""
        source, index = self._source(key)
        if index is None:
            return RowBlocks.of(source)
        block = max(1, BLOCK_BYTES // max(1, source[:1].nbytes))
        return RowBlocks((len(index), *source.shape[1:]), source.dtype,
                         lambda: (source[index[i:i + block]] for i in range(0, len(index), block)))

    def __iter__(self) -> Iterator[str]:
        return (f"{axis}_{name}" for name in self.indices for axis in ("x", "y"))

    def __len__(self) -> int:
        return 2 * len(self.indices)

    def sizes(self) -> dict[str, int]:
        return {name: len(self.raw.y_test if index is None else index) for name, index in self.indices.items()}


def split(raw: RawData, data: DataParams, seed: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The (x, y) arrays of each split (see ``split_indices``)."""
    arrays = SplitArrays(raw, split_indices(raw, data, seed))
    return {name: (arrays[f"x_{name}"], arrays[f"y_{name}"]) for name in SPLITS}


def prepare(data: DataParams, seed: int) -> dict:
    """Load, scale and split the dataset ``data`` names; write each split's shards and
    meta.json (swapped in as one folder). The content hash is of the float32 images and the
    labels, however they are stored."""
    raw = load(data)
    arrays = SplitArrays(raw, split_indices(raw, data, seed))
    rows = {key: arrays.rows(key) for key in arrays}
    meta = {
        "dataset": data.name,
        "num_classes": len(raw.class_names),
        "class_names": list(raw.class_names),
        "input_shape": list(raw.x.shape[1:]),
        "sizes": arrays.sizes(),
        "content_hash": content_hash(rows),
    }
    with atomic_dir(PREPARED_DIR) as staging:
        for key, blocks in rows.items():
            axis, _, name = key.partition("_")
            write_shards(staging / name, axis, blocks, pixels=axis == "x")
        write_json(staging / PREPARED_META.name, meta)
    return meta
