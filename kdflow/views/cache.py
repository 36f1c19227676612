"""The teacher's outputs over the views: its logits, computed once by `soft_targets` and read by
`distill`; and a layer's features, for a feature method, computed by `distill` over the same views.

The logits: on the training split for every view of every image ([images, views, classes], with
the view table they were computed on), on the validation split for the images as they are. The
students rebuild each view they see, so the cache is exactly what the teacher would produce
online for it. The cache does not depend on the distillation method: a feature method's teacher
features are computed in `distill` (``teacher_features``), so no method edit reruns `soft_targets`.

Stored as shards (``data/soft_targets/train-00000.npy``, ``val-...``, ``train_views-...``) with a
``meta.json`` naming the prepared data they were computed on. ``load`` hands them out as the
distilled students' targets, ``teacher_logits`` per split: the training split's are read from the
shards a batch at a time, so memory does not grow with images x views x classes. ``views.top_k``
stores only each view's top k logits; they are expanded back to every class per batch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

import numpy as np

from kdflow.core import KdflowError
from kdflow.core.io import atomic_dir, read_json, write_json
from kdflow.core.paths import SOFT_TARGETS_DIR
from kdflow.core.prepared import TEACHER_LOGITS, Prepared
from kdflow.core.shards import RowBlocks, ShardedArray
from kdflow.core.shards import write as write_shards
from kdflow.models.logits import INFERENCE_BATCH_SIZE
from kdflow.views.table import Views

SPLITS = ("train", "val")
VIEW_TABLE = "train_views"  # the view table of the training split's cached outputs
TOP_K_KEYS = ("train_top_values", "train_top_classes", "train_rest")
META = "meta.json"
RERUN = "rerun `dvc repro soft_targets`"


def feature_target(name: str) -> str:
    """The name of a feature method's teacher features ``name`` among the targets."""
    return f"teacher_{name}"


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
    split, with the view table, as stored: with ``top_k`` below the number of classes the
    training logits are kept as their top k (``top_k_form``); ``dtype`` float16 stores them (or
    their top-k values and rest) in half precision."""
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


def teacher_features(teacher, data: Prepared, views: Views | None, features: Iterable[Any]) -> dict[str, dict]:
    """Each feature method's teacher side over the same views and splits as the cached logits:
    {split: {feature_target(name): array}}. ``features``: the method's declared features (their
    ``name``, ``teacher_layer``, ``param`` and ``teacher`` map)."""
    found: dict[str, dict] = {split: {} for split in SPLITS}
    for feature in features:
        model = _layer_model(teacher, feature.teacher_layer, f"{feature.param}.teacher_layer", feature.teacher)
        for split, value in _run(model, data, views).items():
            found[split][feature_target(feature.name)] = value
    return found


def _layer_model(teacher, layer: str, key: str, transform):
    """The model from the teacher's input to ``transform`` of its layer ``layer``'s output. An
    imported teacher may sit inside its wrapper (input convention -> the user's network -> logits
    head): the layer is then looked up in the network, behind the wrapper's input layers."""
    import keras

    def model(inputs, output):
        try:
            return keras.Model(inputs, transform(output))
        except KdflowError as exc:
            raise KdflowError(f"{key} = {layer!r} {exc}") from None

    names = [candidate.name for candidate in teacher.layers]
    if layer in names:
        return model(teacher.inputs, teacher.get_layer(layer).output)
    inputs = keras.Input(shape=teacher.input_shape[1:])
    h = inputs
    for candidate in teacher.layers[1:]:
        if isinstance(candidate, keras.Model):
            inner = [inner.name for inner in candidate.layers]
            if layer in inner:
                return model(inputs, keras.Model(candidate.inputs, candidate.get_layer(layer).output)(h))
            names += inner
        h = candidate(h)
    raise KdflowError(f"{key} = {layer!r} is not a teacher layer; it has: {', '.join(names)}")


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


def save(cache: dict[str, np.ndarray], data: Prepared, path: Path = SOFT_TARGETS_DIR) -> None:
    """Write every array of ``cache`` as shards, swapped in as one folder."""
    with atomic_dir(path) as staging:
        for key, value in cache.items():
            write_shards(staging, key, RowBlocks.of(np.asarray(value)))
        # The data hash ties the cache to the exact prepared data it was computed on.
        write_json(staging / META, {"data_hash": data.meta["content_hash"], "keys": sorted(cache)})


def _rows(path: Path, key: str) -> ShardedArray:
    # the pages of rows read are released: the cache grows with images x views x classes
    read_as = None if key.endswith(("_classes", "_views")) else np.float32  # float16 logits read as float32
    return ShardedArray(path, key, produced_by="soft_targets", release_pages=True, read_as=read_as)


def check_data(data: Prepared, path: Path = SOFT_TARGETS_DIR) -> dict:
    """The cache's meta.json, checked against the prepared data (cheap: before TensorFlow starts)."""
    meta = read_json(path / META, produced_by="soft_targets")
    if meta.get("data_hash") != data.meta["content_hash"]:
        raise KdflowError(f"{path} was computed on other prepared data: {RERUN}")
    return meta


def load(data: Prepared, views: Views | None, path: Path = SOFT_TARGETS_DIR) -> dict[str, dict]:
    """The cached logits as the distilled students' targets, {split: {TEACHER_LOGITS: rows}},
    checked against the prepared data and against ``views`` (the view table the student side
    derived from the params: it must be the one the teacher saw). The validation logits are in
    memory; the training split's are read from disk by rows (a ``ShardedArray``, or
    ``TopKLogits`` for a top-k cache)."""
    stored = set(check_data(data, path).get("keys", ()))
    logits = {"val": _rows(path, "val")[:]}
    if "train" in stored:
        logits["train"] = _rows(path, "train")
    else:  # cached as the top k (views.top_k)
        logits["train"] = TopKLogits({key: _rows(path, key) for key in TOP_K_KEYS}, data.num_classes)
    if views is not None:
        cached_table = _rows(path, VIEW_TABLE)[:] if VIEW_TABLE in stored else None
        if cached_table is None or not np.array_equal(cached_table, views.table):
            raise KdflowError(f"{path} was computed for other views (seed or views.*): {RERUN}")
    for name in SPLITS:
        per_view = (views.count,) if name == "train" and views is not None else ()
        expected = (len(data.xy(name)[1]), *per_view, data.num_classes)
        if logits[name].shape != expected:
            raise KdflowError(
                f"{path}: {name} logits have shape {logits[name].shape}, expected {expected}: {RERUN}"
            )
    return {split: {TEACHER_LOGITS: logits[split]} for split in SPLITS}


def students_targets(data: Prepared, views: Views | None, online: bool = False, teacher=None,
                     features: Iterable[Any] = (), path: Path = SOFT_TARGETS_DIR) -> dict[str, dict]:
    """What the distilled students learn from the teacher, {split: targets}: the cached logits
    (not the training split's when the teacher runs ``online``, on every batch) and each declared
    feature's teacher side, computed here over the same views with ``teacher``."""
    features = tuple(features)
    if online and features:
        raise KdflowError("views.teacher = online: a feature method needs the teacher's features, which only the "
                          "cached teacher provides; use views.teacher: cached")
    found = load(data, None if online else views, path)
    if online:
        found["train"] = {}
    for split, sides in teacher_features(teacher, data, views, features).items():
        found[split].update(sides)
    return found
