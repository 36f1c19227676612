"""The teacher's cached outputs: computed once by `soft_targets`, read by `distill`.

Always the logits on train and val; for feature-hint methods (FitNets) also the flattened
output of the teacher's hint layer. The students train on the un-augmented images
(train_student.augment is refused), so the cache is exactly what the teacher would produce
online for every batch they see.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from kdflow.data import Prepared
from kdflow.errors import KdflowError
from kdflow.evaluation import INFERENCE_BATCH_SIZE
from kdflow.io import load_npz, save_npz
from kdflow.paths import SOFT_TARGETS

SPLITS = ("train", "val")


def compute(teacher, data: Prepared, feature_layer: str | None = None) -> dict[str, np.ndarray]:
    """Run the teacher once (inference mode: no dropout) over the train and val splits."""
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
    cache = {}
    for name in SPLITS:
        x = data.xy(name)[0]
        # Batch by batch through predict's own compiled function (the same numbers as
        # `predict`, which would first copy all of x into its tf.data pipeline).
        batches = [extractor.predict_on_batch(x[i:i + INFERENCE_BATCH_SIZE])
                   for i in range(0, len(x), INFERENCE_BATCH_SIZE)]
        result = [np.concatenate(parts) for parts in zip(*(b if isinstance(b, list) else [b] for b in batches))]
        cache[name] = result[0].astype(np.float32)
        if feature_layer is not None:
            cache[f"{name}_features"] = result[1].astype(np.float32)
    return cache


def save(cache: dict[str, np.ndarray], data: Prepared, path: Path = SOFT_TARGETS) -> None:
    # The data hash ties the cache to the exact prepared data it was computed on.
    save_npz(path, data_hash=np.array(data.meta["content_hash"]), **cache)


def load(data: Prepared, with_features: bool = False, path: Path = SOFT_TARGETS) -> dict[str, np.ndarray]:
    feature_keys = tuple(f"{s}_features" for s in SPLITS) if with_features else ()
    rerun = "rerun `dvc repro soft_targets`"
    arrays = load_npz(path, ("data_hash", *SPLITS), produced_by="soft_targets")
    if str(arrays.pop("data_hash")) != data.meta["content_hash"]:
        raise KdflowError(f"{path} was computed on other prepared data: {rerun}")
    if feature_keys:
        try:
            arrays.update(load_npz(path, feature_keys, produced_by="soft_targets"))
        except KdflowError:
            raise KdflowError(f"{path} holds no teacher features (needed by fitnet): {rerun}") from None
    for name in SPLITS:
        expected = (len(data.xy(name)[1]), data.num_classes)
        if arrays[name].shape != expected:
            raise KdflowError(
                f"{path}: {name} logits have shape {arrays[name].shape}, expected {expected}: {rerun}"
            )
    return arrays
