"""Batch-norm statistics that match a model's weights, and the check that they do.

A BatchNormalization layer normalises by the batch's statistics while training and by its stored
moving averages in inference mode, which is how models are evaluated and shipped (the TFLite
converter folds the stored statistics into the convolutions). The moving averages start at mean 0,
variance 1 and forget them at the layer's momentum: keras.applications build theirs with 0.999, so
after N steps the initial variance still weighs 0.999^N (0.73 after 320 steps). Where a layer's real
batch variance is far below 1 (depthwise convolutions trained from scratch, ~1e-3), that leftover
dominates the stored variance at any momentum short of thousands of steps, and the model scores
chance in inference mode while it is near perfect with batch statistics (docs/troubleshooting.md).

The remedy is PyTorch's ``torch.optim.swa_utils.update_bn`` ("precise BN"): at the final weights,
one pass over the training images in training mode, each layer's statistics the average of the
batches' (a cumulative average, not an EMA). Keras has no such function, so it is written here.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import keras
import numpy as np
import tensorflow as tf

from kdflow.core.paired import clearly_better
from kdflow.core.params import TrainParams
from kdflow.core.prepared import Prepared

# The re-estimation pass reads at most this many training images, a seeded random sample (as
# "precise BN" reads a fixed number): from 2,048 of the default data's 3,500, the default teacher's
# statistics came within 0.6% of a standard deviation (means) and 3% (variances) of those from all,
# at 59% of the cost (docs/troubleshooting.md).
RECOMPUTE_IMAGES = 2048
# A model warns when its batch statistics are clearly better than its inference mode on the
# validation images (kdflow.core.paired: 5 points, and McNemar's exact test at this level: a
# warning, so less strict than the import check's stop).
DISAGREEMENT_P_VALUE = 0.01


def _all_layers(model: keras.Layer) -> list:
    """``model`` and every layer in it, nested models included, each once."""
    found: dict[int, keras.Layer] = {}
    stack = [model]
    while stack:
        layer = stack.pop()
        if id(layer) not in found:
            found[id(layer)] = layer
            stack.extend(reversed(getattr(layer, "layers", None) or ()))
    return list(found.values())


def batch_norm_layers(model: keras.Layer) -> list[keras.layers.BatchNormalization]:
    """Every BatchNormalization layer of ``model``, nested models included, each once."""
    return [layer for layer in _all_layers(model) if isinstance(layer, keras.layers.BatchNormalization)]


@contextmanager
def _batch_statistics(model: keras.Layer, store: bool) -> Iterator[list[keras.layers.BatchNormalization]]:
    """Within: ``model`` called with training=True normalises every BN layer by the batch's own
    statistics (frozen layers too), with dropout off, so that it computes what inference mode
    would with statistics matching this batch; with ``store`` it stores them as its moving
    statistics (momentum 0), else leaves those as they are (momentum 1). Everything is put back
    on leaving, but the moving statistics (the caller's business)."""
    layers = batch_norm_layers(model)
    dropouts = [layer for layer in _all_layers(model) if isinstance(layer, keras.layers.Dropout)]
    saved = [(layer.momentum, layer.trainable) for layer in layers], [layer.rate for layer in dropouts]
    try:
        for layer in layers:
            layer.momentum, layer.trainable = (0.0 if store else 1.0), True
        for layer in dropouts:
            layer.rate = 0.0
        yield layers
    finally:
        for layer, (momentum, trainable) in zip(layers, saved[0]):
            layer.momentum, layer.trainable = momentum, trainable
        for layer, rate in zip(dropouts, saved[1]):
            layer.rate = rate


def _batches(count: int, batch_size: int, seed: int) -> list[np.ndarray]:
    """Every row once, in seeded random batches of ``batch_size`` (classes mixed as in training),
    the last one taking the remainder (a tiny batch's variance is noise); each sorted, so that rows
    on disk are read in order."""
    rows = np.random.default_rng(seed).permutation(count)
    starts = list(range(0, max(count - batch_size, 0) + 1, batch_size))
    return [np.sort(rows[start:end]) for start, end in zip(starts, starts[1:] + [count])]


def _images_spec(images) -> tf.TensorSpec:
    """Batches of ``images`` of any size: a pass traces its function once."""
    return tf.TensorSpec((None, *images.shape[1:]), tf.float32)


def reestimate(model: keras.Model, images, batch_size: int, seed: int, most: int | None = None) -> int:
    """Replace the moving statistics of every BN layer of ``model`` with the average of its batch
    statistics over ``images`` (seeded random batches of ``batch_size``, each weighted by its size;
    training mode at the current weights, dropout off), or over a seeded random ``most`` of them.
    Returns how many layers it set; 0 (nothing done) without any."""
    with _batch_statistics(model, store=True) as layers:
        if not layers:
            return 0
        moving = [v for layer in layers for v in (layer.moving_mean, layer.moving_variance)]
        sample = None
        if most is not None and len(images) > most:
            sample = np.sort(np.random.default_rng(seed).permutation(len(images))[:most])

        @tf.function(input_signature=[_images_spec(images)])  # traced once, whatever the batch
        def statistics_of(x):
            model(x, training=True)  # momentum 0: stores this batch's statistics
            return [tf.identity(v.value) for v in moving]

        totals = [np.zeros(v.shape, np.float64) for v in moving]
        seen = 0
        for rows in _batches(len(images) if sample is None else len(sample), batch_size, seed):
            rows = rows if sample is None else sample[rows]
            for total, value in zip(totals, statistics_of(np.asarray(images[rows], np.float32))):
                total += value.numpy().astype(np.float64) * len(rows)
            seen += len(rows)
        for variable, total in zip(moving, totals):
            variable.assign((total / seen).astype(variable.dtype))
    return len(layers)


def mode_predictions(model: keras.Model, x, batch_size: int, seed: int,
                     columns: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``model``'s predicted class (the argmax of its outputs, or of those ``columns``, read as
    classes 0, 1, ...) for every row of ``x`` in inference mode, and with every BN layer normalising
    by the batch's own statistics (seeded random batches of ``batch_size``, dropout off): what it
    predicts when its stored statistics are not the problem. Both in one compiled pass; the stored
    statistics are left as they were."""
    inference, batch = np.zeros(len(x), np.int64), np.zeros(len(x), np.int64)
    with _batch_statistics(model, store=False):
        predict = tf.function(lambda images: (model(images, training=False), model(images, training=True)),
                              input_signature=[_images_spec(x)])
        for rows in _batches(len(x), batch_size, seed):
            for predicted, outputs in zip((inference, batch), predict(np.asarray(x[rows], np.float32))):
                outputs = keras.ops.convert_to_numpy(outputs)
                predicted[rows] = np.argmax(outputs if columns is None else outputs[:, columns], axis=1)
    return inference, batch


def disagreement(name: str, inference_correct: np.ndarray, batch_correct: np.ndarray) -> str | None:
    """The one-line warning for a model whose inference mode is clearly worse than its batch
    statistics on the same images (``*_correct``: per image; stored statistics that do not fit its
    weights or these images: a frozen BN fed other images, or statistics not re-estimated), or None."""
    if not clearly_better(inference_correct, batch_correct, DISAGREEMENT_P_VALUE):
        return None
    return (f"warning: {name} scores {inference_correct.mean():.3f} on validation in inference mode but "
            f"{batch_correct.mean():.3f} with batch statistics: its stored batch-norm statistics do not match its "
            "weights or these images (docs/troubleshooting.md)")


def settle(model: keras.Model, summary: dict, data: Prepared, schedule: TrainParams, seed: int, name: str,
           warn=print) -> dict:
    """After training ``model`` on ``data`` under ``schedule``: its stored statistics re-estimated
    over the training images (``schedule.recompute_bn``), then its two modes compared on the
    validation images (``warn`` gets the line, naming ``name``, if they disagree). Returns
    ``summary`` with a ``batch_norm`` entry (the inference-mode validation accuracy before and
    after, and with batch statistics) and the saved model's val_accuracy; as it was without a BN layer."""
    if not batch_norm_layers(model):
        return summary
    x, y = data.xy("val")
    entry = {"val_accuracy_before": summary["val_accuracy"]}  # the training loop's, at these weights
    if schedule.recompute_bn:
        entry["layers"] = reestimate(model, data.xy("train")[0], schedule.batch_size, seed, RECOMPUTE_IMAGES)
    inference, batch = (predicted == y for predicted in mode_predictions(model, x, schedule.batch_size, seed))
    entry["val_accuracy_after"] = round(float(inference.mean()), 6)
    entry["val_accuracy_batch_statistics"] = round(float(batch.mean()), 6)
    line = disagreement(name, inference, batch)
    if line is not None:
        warn(line)
    return {**summary, "val_accuracy": entry["val_accuracy_after"], "batch_norm": entry}


def settled_line(who: str, summaries: list[dict], train_images: int, seconds: float) -> str | None:
    """The stage's one line on the ``batch_norm`` entries of ``summaries`` (settle's, one per
    model, which took ``seconds`` in all): re-estimated or kept, and the mean inference-mode
    validation accuracy before and after; None without a BN layer."""
    entries = [summary["batch_norm"] for summary in summaries if "batch_norm" in summary]
    if not entries:
        return None
    before = np.mean([entry["val_accuracy_before"] for entry in entries])
    after = np.mean([entry["val_accuracy_after"] for entry in entries])
    mean = "mean " if len(entries) > 1 else ""
    if "layers" not in entries[0]:
        return f"{who}: batch-norm statistics kept (recompute_bn: false): {mean}val accuracy {before:.4f}"
    return (f"{who}: batch-norm statistics of {entries[0]['layers']} layers re-estimated over "
            f"{min(train_images, RECOMPUTE_IMAGES)} training images: {mean}val accuracy (inference mode) {before:.4f} -> {after:.4f} ({seconds:.1f} s)")
