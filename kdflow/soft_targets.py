"""The teacher's cached outputs: computed once by `soft_targets`, read by `distill`.

The logits: on the training split for every augmented view of every image (``kdflow.views``:
[images, views, classes], with the view table they were computed on), on the validation split
for the images as they are. The students rebuild each view they see, so the cache is exactly
what the teacher would produce online for it. A method with a feature hint (FitNets) needs the
teacher's features at one layer too: `distill` computes them with ``features`` (the same pass
over the same views), so the cache, and the stage that writes it, do not depend on the method.

Stored as shards (``data/soft_targets/<key>-00000.npy``, ..., ``kdflow.shards``) with a
``meta.json`` naming the prepared data they were computed on. ``distill`` reads the training
split's outputs a batch at a time from the shards, as it reads the images, so its memory does
not grow with images x views x classes. ``views.top_k`` stores only each view's top k logits;
they are expanded back to every class per batch (``TopKLogits``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from kdflow.data import Prepared
from kdflow.errors import KdflowError
from kdflow.inference import INFERENCE_BATCH_SIZE
from kdflow.io import RowBlocks, atomic_dir, read_json, write_json
from kdflow.paths import SOFT_TARGETS_DIR
from kdflow.shards import ShardedArray
from kdflow.shards import write as write_shards
from kdflow.views import Views

SPLITS = ("train", "val")
VIEW_TABLE = "train_views"  # the view table of the training split's cached outputs


def _run(model, data: Prepared, views: Views | None) -> dict[str, np.ndarray]:
    """``model``'s output (inference mode: no dropout) for every view of the training split (the
    images themselves without ``views``) and for the validation split: {split: array}. Each block
    of images is read once for all its views; through predict's own compiled function (the same
    numbers as `predict`, which would first copy all of x into its tf.data pipeline)."""
    found = {}
    for name in SPLITS:
        x = data.xy(name)[0]
        per_view = name == "train" and views is not None
        batches = []
        for i in range(0, len(x), INFERENCE_BATCH_SIZE):
            batch = x[i:i + INFERENCE_BATCH_SIZE]
            if not per_view:
                batches.append(model.predict_on_batch(batch))
                continue
            rows = views.table[i:i + INFERENCE_BATCH_SIZE]
            batches.append(np.stack([model.predict_on_batch(_view(views, x, batch, rows[:, v], v))
                                     for v in range(views.count)], axis=1))
        found[name] = np.concatenate(batches).astype(np.float32)
    return found


def _view(views: Views, x, batch, rows: np.ndarray, view: int):
    """View ``view`` of a block of images (``rows``: their rows of the view table), with its
    partner images read from ``x`` when the views are mixed: the images the students rebuild."""
    if not views.mixed:
        return views.apply(batch, rows)
    partner = np.asarray(views.partners(rows))
    return views.apply(batch, rows, x[partner], views.table[partner, view])


def compute(teacher, data: Prepared, views: Views | None = None, top_k: int = 0,
            dtype: str = "float32") -> dict[str, np.ndarray]:
    """The teacher's logits over every view of the training split and over the validation
    split, with the view table. With ``top_k`` below the number of classes, the training logits
    are kept as their top k (see ``top_k_form``); ``dtype`` float16 stores the training logits
    (or their top-k values and rest) in half precision."""
    cache = _run(teacher, data, views)
    if views is not None:
        cache[VIEW_TABLE] = views.table
    return stored_form(cache, data.num_classes, top_k, dtype)


def stored_form(cache: dict[str, np.ndarray], num_classes: int, top_k: int = 0,
                dtype: str = "float32") -> dict[str, np.ndarray]:
    """``compute``'s full-precision cache as stored with ``top_k`` and ``dtype``."""
    cache = dict(cache)
    if 0 < top_k < num_classes:
        cache.update(top_k_form(cache.pop("train"), top_k))
    for key in ("train", "train_top_values", "train_rest"):
        if key in cache:
            cache[key] = cache[key].astype(dtype)
    return cache


def features(teacher, data: Prepared, layer: str, views: Views | None = None,
             key: str = "distill.fitnet.teacher_layer") -> dict[str, np.ndarray]:
    """The flattened output of the teacher layer ``layer`` over the same views and splits as
    ``compute``: {"train_features", "val_features"}."""
    found = _run(_feature_model(teacher, layer, key), data, views)
    return {f"{name}_features": value for name, value in found.items()}


def _feature_model(teacher, layer: str, key: str):
    """The model from the teacher's input to its layer ``layer`` (flattened). An imported teacher
    may sit inside its wrapper (input convention -> the user's network -> logits head): the layer
    is then looked up in the network, behind the wrapper's input layers."""
    import keras

    def flat(tensor):
        return keras.layers.Flatten()(tensor) if len(tensor.shape) > 2 else tensor

    names = [candidate.name for candidate in teacher.layers]
    if layer in names:
        return keras.Model(teacher.inputs, flat(teacher.get_layer(layer).output))
    inputs = keras.Input(shape=teacher.input_shape[1:])
    h = inputs
    for candidate in teacher.layers[1:]:
        if isinstance(candidate, keras.Model):
            inner = [inner.name for inner in candidate.layers]
            if layer in inner:
                return keras.Model(inputs, flat(keras.Model(candidate.inputs, candidate.get_layer(layer).output)(h)))
            names += inner
        h = candidate(h)
    raise KdflowError(f"{key} = {layer!r} is not a teacher layer; it has: {', '.join(names)}")


TOP_K_KEYS = ("train_top_values", "train_top_classes", "train_rest")


def top_k_form(logits: np.ndarray, k: int) -> dict[str, np.ndarray]:
    """The k largest logits of each row, their classes, and one logit that gives every other class
    an equal share of the remaining probability mass (FKD's marginal smoothing). Expanded back by
    ``full_logits``, the softmax (T = 1) is exact for the top k; the rest is spread evenly."""
    classes = np.argsort(-logits, axis=-1, kind="stable")[..., :k]
    values = np.take_along_axis(logits, classes, axis=-1)
    logits64 = logits.astype(np.float64)
    log_total = np.logaddexp.reduce(logits64, axis=-1)
    top_mass = np.exp(values.astype(np.float64) - log_total[..., None]).sum(axis=-1)
    # the floor keeps the log finite for a teacher that puts (numerically) all its mass in the top k
    rest = np.log(np.maximum(1.0 - top_mass, 1e-30) / (logits.shape[-1] - k)) + log_total
    return {"train_top_values": values, "train_top_classes": classes.astype(np.int32),
            "train_rest": rest.astype(np.float32)}


def full_logits(values: np.ndarray, classes: np.ndarray, rest: np.ndarray, num_classes: int) -> np.ndarray:
    logits = np.repeat(rest[..., None], num_classes, axis=-1).astype(np.float32)
    np.put_along_axis(logits, classes, values, axis=-1)
    return logits


class TopKLogits:
    """The training split's cached top-k outputs, read as full logits: rows (``take``) are
    read from the shards and expanded to every class on the fly, as the student's batches ask."""

    def __init__(self, parts: dict[str, ShardedArray], num_classes: int):
        self.parts, self.num_classes = parts, num_classes
        self.shape = (*parts["train_rest"].shape, num_classes)
        self.dtype = np.dtype(np.float32)

    def __len__(self) -> int:
        return self.shape[0]

    def take(self, index) -> np.ndarray:
        return full_logits(*(self.parts[key].take(index) for key in TOP_K_KEYS), self.num_classes)

    __getitem__ = take

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        whole = self.take(slice(None))
        return whole if dtype is None else whole.astype(dtype)


META = "meta.json"


def save(cache: dict[str, np.ndarray], data: Prepared, path: Path = SOFT_TARGETS_DIR) -> None:
    """Write every array of ``cache`` as shards, swapped in as one folder."""
    with atomic_dir(path) as staging:
        for key, value in cache.items():
            write_shards(staging, key, RowBlocks.of(np.asarray(value)))
        # The data hash ties the cache to the exact prepared data it was computed on.
        write_json(staging / META, {"data_hash": data.meta["content_hash"], "keys": sorted(cache)})


def _read(path: Path, keys: tuple[str, ...]) -> dict[str, np.ndarray]:
    return {key: _rows(path, key)[:] for key in keys}


def _rows(path: Path, key: str) -> ShardedArray:
    # the pages of rows read are released: the cache grows with images x views x classes
    read_as = None if key.endswith(("_classes", "_views")) else np.float32  # float16 logits read as float32
    return ShardedArray(path, key, produced_by="soft_targets", release_pages=True, read_as=read_as)


RERUN = "rerun `dvc repro soft_targets`"


def check_data(data: Prepared, path: Path = SOFT_TARGETS_DIR) -> dict:
    """The cache's meta.json, checked against the prepared data (cheap: before TensorFlow starts)."""
    meta = read_json(path / META, produced_by="soft_targets")
    if meta.get("data_hash") != data.meta["content_hash"]:
        raise KdflowError(f"{path} was computed on other prepared data: {RERUN}")
    return meta


def load(data: Prepared, views: Views | None, path: Path = SOFT_TARGETS_DIR) -> dict[str, np.ndarray]:
    """The cache, checked against the prepared data and against ``views`` (the view table the
    student side derived from the params: it must be the one the teacher saw). The validation
    outputs are in memory; the training split's are read from disk by rows (a ``ShardedArray``,
    or ``TopKLogits`` for a top-k cache)."""
    stored = set(check_data(data, path).get("keys", ()))
    arrays = _read(path, ("val",))
    if "train" in stored:
        arrays["train"] = _rows(path, "train")
    else:  # cached as the top k (views.top_k)
        arrays["train"] = TopKLogits({key: _rows(path, key) for key in TOP_K_KEYS}, data.num_classes)
    if views is not None:
        cached_table = _read(path, (VIEW_TABLE,))[VIEW_TABLE] if VIEW_TABLE in stored else None
        if cached_table is None or not np.array_equal(cached_table, views.table):
            raise KdflowError(f"{path} was computed for other views (seed or views.*): {RERUN}")
    for name in SPLITS:
        per_view = (views.count,) if name == "train" and views is not None else ()
        expected = (len(data.xy(name)[1]), *per_view, data.num_classes)
        if arrays[name].shape != expected:
            raise KdflowError(
                f"{path}: {name} logits have shape {arrays[name].shape}, expected {expected}: {RERUN}"
            )
    return arrays
