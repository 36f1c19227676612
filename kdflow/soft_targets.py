"""The teacher's cached outputs: computed once by `soft_targets`, read by `distill`.

Always the logits; for feature-hint methods (FitNets) also the flattened output of the
teacher's hint layer. On the training split they are cached for every augmented view of every
image (``kdflow.views``: [images, views, ...], with the view table they were computed on);
on the validation split for the images as they are. The students rebuild each view they see,
so the cache is exactly what the teacher would produce online for it.

Stored as shards (``data/soft_targets/<key>-00000.npy``, ..., ``kdflow.shards``) with a
``meta.json`` naming the prepared data they were computed on. ``distill`` loads them whole:
views x classes floats per image (320 bytes at 8 views and 10 classes; ``views.top_k`` keeps
it small for many classes).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from kdflow.data import Prepared
from kdflow.errors import KdflowError
from kdflow.evaluation import INFERENCE_BATCH_SIZE
from kdflow.io import RowBlocks, atomic_dir, read_json, write_json
from kdflow.paths import SOFT_TARGETS_DIR
from kdflow.shards import ShardedArray
from kdflow.shards import write as write_shards
from kdflow.views import Views
from kdflow.views import apply as apply_view

SPLITS = ("train", "val")
VIEW_TABLE = "train_views"  # the view table of the training split's cached outputs


def compute(teacher, data: Prepared, feature_layer: str | None = None, views: Views | None = None,
            top_k: int = 0) -> dict[str, np.ndarray]:
    """Run the teacher once (inference mode: no dropout) over every view of the training split
    (the images themselves without ``views``) and over the validation split. With ``top_k``
    below the number of classes, the training logits are kept as their top k (see ``top_k_form``)."""
    import keras

    outputs = [teacher.outputs[0]]
    if feature_layer is not None:
        try:
            feature = teacher.get_layer(feature_layer).output
        except ValueError:
            names = ", ".join(layer.name for layer in teacher.layers)
            raise KdflowError(f"fitnet.teacher_layer = {feature_layer!r} is not a teacher layer; it has: {names}") from None
        outputs.append(keras.layers.Flatten()(feature) if len(feature.shape) > 2 else feature)
    extractor = keras.Model(teacher.inputs, outputs)

    def run(x, view_ids: range | None = None) -> list[np.ndarray]:
        """The outputs for every row of x, read once, batch by batch: [rows, ...] as they are, or
        [rows, views, ...] for each of ``view_ids``. Through predict's own compiled function (the
        same numbers as `predict`, which would first copy all of x into its tf.data pipeline)."""
        batches = []
        for i in range(0, len(x), INFERENCE_BATCH_SIZE):
            batch = x[i:i + INFERENCE_BATCH_SIZE]
            if view_ids is None:
                batches.append(_as_list(extractor.predict_on_batch(batch)))
                continue
            per_view = [_as_list(extractor.predict_on_batch(
                apply_view(batch, views.table[i:i + INFERENCE_BATCH_SIZE, v], views.max_shift))) for v in view_ids]
            batches.append([np.stack(parts, axis=1) for parts in zip(*per_view)])
        return [np.concatenate(parts).astype(np.float32) for parts in zip(*batches)]

    cache = {}
    for name in SPLITS:
        x = data.xy(name)[0]
        if name == "train" and views is not None:
            result = run(x, range(views.count))  # [images, views, ...]
            cache[VIEW_TABLE] = views.table
        else:
            result = run(x)
        cache[name] = result[0]
        if feature_layer is not None:
            cache[f"{name}_features"] = result[1]
    if 0 < top_k < data.num_classes:
        cache.update(top_k_form(cache.pop("train"), top_k))
    return cache


def _as_list(out) -> list[np.ndarray]:
    return out if isinstance(out, list) else [out]


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


META = "meta.json"


def save(cache: dict[str, np.ndarray], data: Prepared, path: Path = SOFT_TARGETS_DIR) -> None:
    """Write every array of ``cache`` as shards, swapped in as one folder."""
    with atomic_dir(path) as staging:
        for key, value in cache.items():
            write_shards(staging, key, RowBlocks.of(np.asarray(value)))
        # The data hash ties the cache to the exact prepared data it was computed on.
        write_json(staging / META, {"data_hash": data.meta["content_hash"], "keys": sorted(cache)})


def _read(path: Path, keys: tuple[str, ...]) -> dict[str, np.ndarray]:
    return {key: ShardedArray(path, key, produced_by="soft_targets")[:] for key in keys}


def load(data: Prepared, views: Views | None, with_features: bool = False,
         path: Path = SOFT_TARGETS_DIR) -> dict[str, np.ndarray]:
    """The cache, checked against the prepared data and against ``views`` (the view table the
    student side derived from the params: it must be the one the teacher saw)."""
    rerun = "rerun `dvc repro soft_targets`"
    meta = read_json(path / META, produced_by="soft_targets")
    if meta.get("data_hash") != data.meta["content_hash"]:
        raise KdflowError(f"{path} was computed on other prepared data: {rerun}")
    stored = set(meta.get("keys", ()))
    arrays = _read(path, ("val",))
    if "train" in stored:
        arrays.update(_read(path, ("train",)))
    else:  # cached as the top k (views.top_k)
        top = _read(path, TOP_K_KEYS)
        arrays["train"] = full_logits(*(top[key] for key in TOP_K_KEYS), data.num_classes)
    if with_features:
        feature_keys = tuple(f"{s}_features" for s in SPLITS)
        if not stored.issuperset(feature_keys):
            raise KdflowError(f"{path} holds no teacher features (needed by fitnet): {rerun}")
        arrays.update(_read(path, feature_keys))
    if views is not None:
        cached_table = _read(path, (VIEW_TABLE,))[VIEW_TABLE] if VIEW_TABLE in stored else None
        if cached_table is None or not np.array_equal(cached_table, views.table):
            raise KdflowError(f"{path} was computed for other views (seed or views.*): {rerun}")
    for name in SPLITS:
        per_view = (views.count,) if name == "train" and views is not None else ()
        expected = (len(data.xy(name)[1]), *per_view, data.num_classes)
        if arrays[name].shape != expected:
            raise KdflowError(
                f"{path}: {name} logits have shape {arrays[name].shape}, expected {expected}: {rerun}"
            )
    return arrays
