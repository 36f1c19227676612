"""Arrays kept on disk as shards of rows (``<name>-00000.npy``, ...), read through memory maps.

The prepared splits live this way, so no stage after `prepare` holds a dataset whole: a
``ShardedArray`` reads only the rows it is asked for. Images are stored as uint8 when every
pixel is exactly k/255 (8-bit sources: the embedded digits, integer .npz arrays), else as
float32; either way a read gives float32 in [0, 1], bit for bit the values `prepare` computed.
"""

from __future__ import annotations

import mmap
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from kdflow.core import KdflowError
from kdflow.core.io import atomic_path

SHARD_BYTES = 32 * 2**20  # a shard holds about this many bytes of rows (as the source gives them)


@dataclass(frozen=True)
class RowBlocks:
    """An array given as consecutive blocks of rows, made on demand: it can be hashed and
    written without ever being held whole."""

    shape: tuple[int, ...]
    dtype: np.dtype
    blocks: Callable[[], Iterator[np.ndarray]]

    @classmethod
    def of(cls, array: np.ndarray) -> "RowBlocks":
        return cls(tuple(int(n) for n in array.shape), array.dtype, lambda: iter([array]))

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * self.dtype.itemsize


def as_bytes(array: np.ndarray) -> memoryview:
    """The array's bytes in C order, without a copy where it is already contiguous."""
    return memoryview(np.ascontiguousarray(array).reshape(-1)).cast("B")  # reshape: 0-d arrays too


def _exact_as_uint8(block: np.ndarray) -> bool:
    """Whether float32 images ``block`` are all k/255, so that uint8 stores them exactly."""
    levels = np.rint(block * np.float32(255.0))
    if levels.size and (levels.min() < 0 or levels.max() > 255):
        return False
    return np.array_equal(_scaled(levels.astype(np.uint8)).view(np.uint32), block.view(np.uint32))  # bitwise


def _scaled(pixels: np.ndarray) -> np.ndarray:
    scaled = pixels.astype(np.float32)
    scaled /= np.float32(255.0)  # float32 division: the values kdflow.data.sources computes
    return scaled


def write(folder: Path, name: str, rows: RowBlocks, pixels: bool = False) -> list[int]:
    """Write ``rows`` as ``folder/name-00000.npy``, ... of about SHARD_BYTES each, streaming
    block by block (memory: one block); with ``pixels``, as uint8 if every value is exactly
    k/255 (checked in a first pass over the blocks). Return the number of rows in each shard."""
    stored = rows.dtype
    if pixels and rows.dtype == np.float32 and all(_exact_as_uint8(np.asarray(b)) for b in rows.blocks()):
        stored = np.dtype(np.uint8)
    row_shape = rows.shape[1:]
    per_shard = max(1, SHARD_BYTES // max(1, int(np.prod(row_shape, dtype=np.int64)) * rows.dtype.itemsize))
    total = rows.shape[0]
    counts = [min(per_shard, total - start) for start in range(0, total, per_shard)] or [0]
    folder.mkdir(parents=True, exist_ok=True)
    blocks = (np.asarray(b) for b in rows.blocks())
    pending = np.empty((0, *row_shape), rows.dtype)
    for shard, count in enumerate(counts):
        with atomic_path(folder / f"{name}-{shard:05d}.npy") as tmp, open(tmp, "wb") as f:
            header = {"descr": np.lib.format.dtype_to_descr(stored), "fortran_order": False,
                      "shape": (count, *row_shape)}
            np.lib.format.write_array_header_1_0(f, header)
            left = count
            while left:
                if not len(pending):
                    pending = next(blocks)
                part, pending = pending[:left], pending[left:]
                f.write(as_bytes(np.rint(part * np.float32(255.0)).astype(np.uint8) if stored != rows.dtype else part))
                left -= len(part)
    return counts


class ShardedArray:
    """The shards ``folder/name-*.npy`` as one read-only array of rows: ``len``, ``shape``,
    slices and integer index arrays (``a[3:7]``, ``a[np.array([5, 1])]``) read just those
    rows. With ``pixels``, uint8 shards read as float32 / 255."""

    def __init__(self, folder: Path, name: str, pixels: bool = False, produced_by: str = "prepare",
                 release_pages: bool = False, read_as: np.dtype | None = None):
        files = sorted(Path(folder).glob(f"{name}-[0-9][0-9][0-9][0-9][0-9].npy"))
        if not files:
            raise KdflowError(f"{folder}/{name}-*.npy is missing: run `dvc repro {produced_by}` first")
        try:
            self._shards = [np.load(f, mmap_mode="r", allow_pickle=False) for f in files]
        except (OSError, ValueError) as exc:
            raise KdflowError(f"{folder}/{name}-*.npy is corrupt ({exc}): rerun `dvc repro --force {produced_by}`") from None
        row_shapes = {s.shape[1:] for s in self._shards}
        if len(row_shapes) != 1:
            raise KdflowError(f"{folder}/{name}-*.npy: shards of different row shapes: rerun `dvc repro --force {produced_by}`")
        self.pixels = pixels
        # Drop the mapped pages after every read: an epoch reads every row, and the pages it
        # touched would stay in the process's RSS (file-backed, reclaimable, but counted), so the
        # peak would follow the array's size. The rows read are copied first; the page cache
        # keeps the file (docs/performance.md).
        self.release_pages = release_pages
        self._starts = np.cumsum([0] + [len(s) for s in self._shards])
        self.shape = (int(self._starts[-1]), *row_shapes.pop())
        # read_as: the rows' dtype as read (float16 cached logits read as float32)
        self.dtype = np.dtype(np.float32) if pixels else np.dtype(read_as or self._shards[0].dtype)

    @classmethod
    def joined(cls, first: "ShardedArray", second: "ShardedArray") -> "ShardedArray":
        """The rows of ``first`` then those of ``second`` (rows of one shape) as one array, still on disk."""
        if first.shape[1:] != second.shape[1:] or first.pixels != second.pixels:
            raise KdflowError(f"cannot join rows of shape {first.shape[1:]} and {second.shape[1:]}")
        joined = cls.__new__(cls)
        joined._shards = first._shards + second._shards
        joined.pixels, joined.release_pages, joined.dtype = first.pixels, first.release_pages, first.dtype
        joined._starts = np.cumsum([0] + [len(s) for s in joined._shards])
        joined.shape = (int(joined._starts[-1]), *first.shape[1:])
        return joined

    def __len__(self) -> int:
        return self.shape[0]

    def _read(self, shard: int, rows) -> np.ndarray:
        block = np.asarray(self._shards[shard][rows])
        mapped = getattr(self._shards[shard], "_mmap", None)
        if self.release_pages and mapped is not None:
            block = np.array(block)  # a copy of the rows, before their pages go
            mapped.madvise(mmap.MADV_DONTNEED)
        if self.pixels and block.dtype == np.uint8:
            return _scaled(block)
        return block.astype(self.dtype, copy=False)

    def __getitem__(self, index) -> np.ndarray:
        if isinstance(index, slice):
            start, stop, step = index.indices(len(self))
            if step != 1:
                return self[np.arange(start, stop, step)]
            first = max(0, int(np.searchsorted(self._starts, start, side="right")) - 1)
            parts = []
            for shard in range(first, len(self._shards)):
                lo, hi = self._starts[shard], self._starts[shard + 1]
                if lo >= stop:
                    break
                if hi > start:
                    parts.append(self._read(shard, slice(max(start, lo) - lo, min(stop, hi) - lo)))
            return np.concatenate(parts) if parts else np.empty((0, *self.shape[1:]), self.dtype)
        index = np.asarray(index)
        if index.ndim == 0:
            return self[int(index):int(index) + 1][0]
        index = np.where(index < 0, index + len(self), index).astype(np.int64)
        if index.size and (index.min() < 0 or index.max() >= len(self)):
            raise IndexError(f"row index out of range for {len(self)} rows")
        shard_of = np.searchsorted(self._starts, index, side="right") - 1
        out = np.empty((len(index), *self.shape[1:]), self.dtype)
        for shard in np.unique(shard_of):
            at = shard_of == shard
            out[at] = self._read(shard, index[at] - self._starts[shard])
        return out

    take = __getitem__

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        whole = self[:]
        return whole if dtype is None else whole.astype(dtype)
