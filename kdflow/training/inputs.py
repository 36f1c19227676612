"""The training input pipeline: the batches of (images, targets) the loop trains on, gathered by
index from the images on disk (or in memory) and any per-sample targets (the labels, and for the
distilled students the teacher's cached outputs, which it carries without knowing them)."""

from __future__ import annotations

from typing import Mapping, Protocol

import numpy as np
import tensorflow as tf

from kdflow.core import KdflowError
from kdflow.core.shards import ShardedArray
from kdflow.training.objective import LABEL_WEIGHT, LABELS, PARTNER_LABELS

# labels, plus any per-sample targets; a target may be rows on disk (anything with shape, dtype
# float32 and take(rows): the teacher's cached outputs)
Targets = Mapping[str, np.ndarray]
Images = np.ndarray | ShardedArray  # in memory, or the prepared images on disk
IMAGES = "images"


class ViewSource(Protocol):
    """What the pipeline needs of the training views (kdflow.views.table.Views; not imported here,
    so that the view kinds' code is no dependency of the stages that train without views)."""

    table: np.ndarray  # [images, views, columns]

    @property
    def count(self) -> int: ...

    @property
    def mixed(self) -> bool: ...

    def partners(self, rows): ...

    def label_weight(self, rows, image_shape): ...

    def apply(self, images, rows, partner_images=None, partner_rows=None): ...

    def choice(self, seed, epoch, count_images: int): ...


class ImageTensors:
    """The in-memory image arrays a trainer reads, each as one TF copy made once (the repeats of a
    stage train on one array). A non-trainable variable: a tf.data function that captures a
    constant embeds a copy of it in every dataset's graph; a variable is captured as a handle.
    Under a distribution strategy a variable would be mirrored onto every replica, so there it
    stays a constant."""

    def __init__(self):
        self._made: dict[int, tuple[np.ndarray, tf.Variable | tf.Tensor]] = {}

    def __call__(self, x: np.ndarray) -> tf.Variable | tf.Tensor:
        if id(x) not in self._made:
            tensor = tf.constant(x) if tf.distribute.has_strategy() else tf.Variable(x, trainable=False,
                                                                                     name="training_images")
            self._made[id(x)] = (x, tensor)  # keeps the array alive, so its id stays its own
        return self._made[id(x)][1]


def make_dataset(x: Images, targets: Targets, batch_size: int, seed: int | None = None,
                 epochs: range = range(1), views: ViewSource | None = None,
                 replicas: tf.distribute.InputContext | None = None,
                 tensors: ImageTensors | None = None) -> tf.data.Dataset:
    """The batches of (images, targets), gathered by index: from the images on disk for a
    ``ShardedArray`` (only the rows of each batch are read), or from one TF copy of an array in
    memory (made by ``tensors``, or for this dataset alone). Without a seed: one pass in order
    (validation). With a seed: the batches of ``epochs``, each epoch in its own order, a function
    of (seed, epoch number) only, so a run resumed at epoch k reads exactly the batches an
    uninterrupted run reads.

    With ``views``, each sample is the view ``views.choice(seed, epoch)`` picks for it, built on
    the fly, and every target but the labels is given per view ([images, views, ...]): the
    teacher's cached output for exactly that view. A mixed view (``views.mixed``) adds its
    partner's label and the share of its own (``PARTNER_LABELS``, ``LABEL_WEIGHT``): the mixed label.

    With ``replicas`` (a strategy's input context for this worker, several replicas), the
    elements are this worker's replicas' shares of each global batch in turn (see
    ``_replica_share``), and the training epochs hold full global batches only."""
    targets = {key: _as_target(key, value) for key, value in targets.items()}
    share = _replica_share(replicas)
    tensors = tensors or ImageTensors()
    # Everything the batch reads: in memory, one TF copy each; on disk (the prepared images, the
    # teacher's cached outputs), the batch's rows of all of them in one read (_row_readers).
    readers = _row_readers({IMAGES: x, **targets}, tensors)
    n = len(x)
    mixed = views is not None and views.mixed
    if mixed:  # a mixed view reads its partner image too, and its label for the mixed label
        partners = _row_readers({IMAGES: x, LABELS: targets[LABELS]}, tensors)
    if views is not None:
        view_table = tf.constant(views.table)
        for key, value in targets.items():
            if key != LABELS and value.shape[:2] != views.table.shape[:2]:
                raise KdflowError(f"{key} has shape {value.shape}: expected one row per view "
                                  f"{views.table.shape[:2]}: rerun `dvc repro soft_targets`")

    def epoch_batches(epoch):
        if seed is None:
            batches = tf.data.Dataset.range(n, output_type=tf.int32)
        else:
            seed_pair = tf.stack([tf.constant(seed, tf.int64), epoch])
            order = tf.random.experimental.stateless_shuffle(tf.range(n), seed=seed_pair)
            if views is None:
                batches = tf.data.Dataset.from_tensor_slices(order)
            else:
                chosen = tf.gather(views.choice(seed, epoch, n), order)
                batches = tf.data.Dataset.from_tensor_slices((order, chosen))
        batches = batches.batch(batch_size, drop_remainder=share is not None and seed is not None)
        return batches if share is None else batches.flat_map(share)  # indices: each worker gathers its share

    def gather(idx, view=None):
        found = readers(idx)
        images = found.pop(IMAGES)
        if view is None:
            return images, found
        rows = tf.gather_nd(view_table, tf.stack([idx, view], axis=1))
        # every view of each row, then the row's view: [b, views, ...] -> [b, ...]
        found = {key: t if key == LABELS else tf.gather(t, view, batch_dims=1) for key, t in found.items()}
        if not mixed:
            return views.apply(images, rows), found
        partner = views.partners(rows)
        other = partners(partner)
        partner_rows = tf.gather_nd(view_table, tf.stack([partner, view], axis=1))
        found.update({PARTNER_LABELS: other[LABELS], LABEL_WEIGHT: views.label_weight(rows, x.shape[1:])})
        return views.apply(images, rows, other[IMAGES], partner_rows), found

    ds = tf.data.Dataset.range(epochs.start, epochs.stop).flat_map(epoch_batches)
    # Sequential map: a parallel one made Ctrl-C mid-epoch abort in glibc during shutdown.
    ds = ds.map(gather)
    return ds.prefetch(tf.data.AUTOTUNE)


def _row_readers(arrays: Mapping[str, Images], tensors: ImageTensors):
    """idx -> {name: the rows idx of that array}, as a TF function of the index batch. Arrays in
    memory are gathered from one TF copy (``tensors`` for the images; a constant for a target);
    arrays on disk (a ShardedArray, kdflow.views.cache.TopKLogits: anything with ``take``) are
    read by one ``tf.numpy_function`` call for all of them: a call per array and batch made the
    distilled students' epoch measurably slower than the scratch students' (docs/performance.md)."""
    in_memory = {key: (tensors(value) if key == IMAGES else tf.constant(value))
                 for key, value in arrays.items() if isinstance(value, np.ndarray)}
    on_disk = {key: value for key, value in arrays.items() if not isinstance(value, np.ndarray)}
    names = list(on_disk)

    def read_disk(idx):
        return [on_disk[key].take(idx) for key in names]

    def read(idx):
        found = {key: tf.gather(tensor, idx) for key, tensor in in_memory.items()}
        if names:
            rows = tf.numpy_function(read_disk, [idx], [tf.as_dtype(on_disk[key].dtype) for key in names],
                                     stateful=False)
            for key, value in zip(names, rows):
                value.set_shape([None, *on_disk[key].shape[1:]])
                found[key] = value
        return {key: found[key] for key in arrays}  # in the given order
    return read


def _replica_share(context: tf.distribute.InputContext | None):
    """The function that turns each global batch into this worker's per-replica batches:
    replica r of R takes rows [r*b//R, (r+1)*b//R) of a b-row batch, so the global batches,
    and which rows each replica gets, do not depend on how the replicas are spread over
    workers. None with one replica: batches pass through untouched."""
    if context is None or context.num_replicas_in_sync == 1:
        return None
    replicas = context.num_replicas_in_sync
    local = replicas // context.num_input_pipelines
    first = context.input_pipeline_id * local

    def share(*batch):
        rows = tf.shape(tf.nest.flatten(batch)[0])[0]

        def part(j):
            lo, hi = (first + j) * rows // replicas, (first + j + 1) * rows // replicas
            return tf.nest.map_structure(lambda t: t[lo:hi], batch if len(batch) > 1 else batch[0])
        return tf.data.Dataset.range(local, output_type=tf.int32).map(part)
    return share


def _as_target(key: str, value):
    if hasattr(value, "take") and not isinstance(value, np.ndarray) and value.dtype == np.float32:
        return value  # rows on disk, read per batch
    return np.asarray(value, dtype=np.int32 if key == LABELS else np.float32)
