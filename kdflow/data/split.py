"""The seeded stratified split of a dataset source and the prepared files it writes (read back by
``kdflow.core.prepared``): the `prepare` stage's work."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import numpy as np
from sklearn.model_selection import train_test_split

from kdflow.core import KdflowError
from kdflow.core.io import atomic_dir, write_json
from kdflow.core.paths import PREPARED_DIR, PREPARED_META
from kdflow.core.prepared import SPLITS, UNLABELED, UNLABELED_IMAGES, content_hash
from kdflow.core.shards import RowBlocks
from kdflow.core.shards import write as write_shards
from kdflow.data.sources import DataParams, RawData, load, load_unlabeled

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


def keep_labels(indices: dict[str, np.ndarray | None], y: np.ndarray, per_class: int | None,
                seed: int) -> tuple[dict[str, np.ndarray | None], np.ndarray]:
    """data.labels_per_class: ``per_class`` training images of each class keep their label
    (drawn with ``seed``, every class alike; all of a class that has fewer); the other training
    indices are returned apart, as images without labels. val and test are untouched."""
    train = indices["train"]
    if per_class is None:
        return indices, train[:0]
    rng = np.random.default_rng(seed)
    kept = [rng.permutation(train[y[train] == c])[:per_class] for c in np.unique(y[train])]
    keep = np.isin(train, np.concatenate(kept))
    return {**indices, "train": train[keep]}, train[~keep]


class SplitArrays(Mapping):
    """x_<split> and y_<split> of each split, gathered from the source when read, and
    x_unlabeled: the training images whose labels were dropped, then data.unlabeled's."""

    def __init__(self, raw: RawData, indices: dict[str, np.ndarray | None],
                 dropped: np.ndarray | None = None, unlabeled=None):
        self.raw, self.indices = raw, indices
        self.dropped = np.arange(0) if dropped is None else dropped
        self.unlabeled = unlabeled  # data.unlabeled's images (array or ShardedArray), or None

    def _source(self, key: str) -> tuple[np.ndarray, np.ndarray | None]:
        axis, _, name = key.partition("_")
        index = self.indices[name]
        if index is None:
            return (self.raw.x_test if axis == "x" else self.raw.y_test), None
        return (self.raw.x if axis == "x" else self.raw.y), index

    def __getitem__(self, key: str) -> np.ndarray:
        if key == UNLABELED_IMAGES:
            return np.concatenate(list(self.rows(key).blocks()))
        source, index = self._source(key)
        return source if index is None else source[index]

    def rows(self, key: str) -> RowBlocks:
        """The same array as blocks (``_gathered``)."""
        if key == UNLABELED_IMAGES:
            return self._unlabeled_rows()
        source, index = self._source(key)
        return RowBlocks.of(source) if index is None else _gathered(source, index)

    def _unlabeled_rows(self) -> RowBlocks:
        dropped = _gathered(self.raw.x, self.dropped)
        if self.unlabeled is None:
            return dropped
        given = _gathered(self.unlabeled, np.arange(len(self.unlabeled)))

        def blocks():
            yield from dropped.blocks()
            yield from given.blocks()
        return RowBlocks((dropped.shape[0] + given.shape[0], *dropped.shape[1:]), dropped.dtype, blocks)

    @property
    def unlabeled_count(self) -> int:
        return len(self.dropped) + (0 if self.unlabeled is None else len(self.unlabeled))

    def __iter__(self) -> Iterator[str]:
        yield from (f"{axis}_{name}" for name in self.indices for axis in ("x", "y"))
        if self.unlabeled_count:  # without any, the prepared data is what it always was
            yield UNLABELED_IMAGES

    def __len__(self) -> int:
        return 2 * len(self.indices) + bool(self.unlabeled_count)

    def sizes(self) -> dict[str, int]:
        sizes = {name: len(self.raw.y_test if index is None else index) for name, index in self.indices.items()}
        return {**sizes, UNLABELED: self.unlabeled_count} if self.unlabeled_count else sizes


def _gathered(source, index: np.ndarray) -> RowBlocks:
    """Rows ``index`` of ``source`` as blocks of about BLOCK_BYTES: prepare hashes and writes each
    split without gathering it whole, so it holds the source and a block or two, not a second
    copy of the dataset."""
    block = max(1, BLOCK_BYTES // max(1, source[:1].nbytes))
    return RowBlocks((len(index), *source.shape[1:]), np.dtype(source.dtype),
                     lambda: (source[index[i:i + block]] for i in range(0, len(index), block)))


def split(raw: RawData, data: DataParams, seed: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The (x, y) arrays of each split (see ``split_indices``)."""
    arrays = SplitArrays(raw, split_indices(raw, data, seed))
    return {name: (arrays[f"x_{name}"], arrays[f"y_{name}"]) for name in SPLITS}


def prepare(data: DataParams, seed: int) -> dict:
    """Load, scale and split the dataset ``data`` names, with its images without labels
    (data.labels_per_class, data.unlabeled); write each split's shards and meta.json (swapped in
    as one folder). The content hash is of the float32 images and the
    labels, however they are stored."""
    raw = load(data)
    indices, dropped = keep_labels(split_indices(raw, data, seed), raw.y, data.labels_per_class, seed)
    unlabeled = load_unlabeled(data.unlabeled, raw.x.shape[1:]) if data.has_unlabeled_path else None
    arrays = SplitArrays(raw, indices, dropped, unlabeled)
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
