"""The one training loop, for every strategy: TensorFlow's custom-loop pattern around Keras 3
objects. Each step runs in ``strategy.run`` on every replica; ``optimizer.apply_gradients``
sums the replicas' gradients; metrics are read outside the replicas. Keras callbacks (early
stopping, dvclive, the epoch checkpoint, the progress line) are driven as ``fit`` drives them.

Keras' own ``fit`` is not used because it fails under ``MultiWorkerMirroredStrategy``
(keras-team/keras#20585). This step computes what ``fit``'s does; traced into another graph,
its weights differ from ``fit``'s by float round-off (~4e-8 after 3 epochs of a small student).

Teacher, scratch student and distilled student all train here, each as a
``kdflow.objective.TrainingModel``; they differ only in its objective and in the targets
they are given (labels, plus the teacher's cached outputs for distillation: ``fit_prepared``).
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Mapping, Protocol

import keras
import numpy as np
import tensorflow as tf

from kdflow.data import Prepared
from kdflow.errors import KdflowError
from kdflow.inference import INFERENCE_BATCH_SIZE
from kdflow.objective import LABEL_WEIGHT, LABELS, PARTNER_LABELS, TrainingModel
from kdflow.params import TrainParams
from kdflow.resume import EpochCheckpoint
from kdflow.shards import ShardedArray
from kdflow.tracking import LearningRateLogger

# The quantity early stopping watches: the validation cross-entropy with the hard labels
# (for the distilled student too, as in the reference repo: its KD term is no model-selection signal).
MONITOR = "val_hard_ce"
# Training steps per compiled call: with the default small student, Python dispatch between
# steps was ~40% of a step on 2 CPU cores (docs/performance.md).
STEPS_PER_EXECUTION = 16

# see kdflow.objective: labels (+ teacher_logits, teacher_features); a target may be rows on disk
# (anything with shape, dtype float32 and take(rows): the teacher's cached outputs)
Targets = Mapping[str, np.ndarray]
Images = np.ndarray | ShardedArray  # in memory, or the prepared images on disk


class Views(Protocol):
    """What the loop needs of the training views (kdflow.views.Views; not imported here, so that
    the view kinds' code is no dependency of the stages that train without views)."""

    table: np.ndarray  # [images, views, columns]

    @property
    def count(self) -> int: ...

    @property
    def mixed(self) -> bool: ...

    def partners(self, rows): ...

    def label_weight(self, rows, image_shape): ...

    def apply(self, images, rows, partner_images=None, partner_rows=None): ...

    def choice(self, seed, epoch, count_images: int): ...


def make_dataset(x: Images, targets: Targets, batch_size: int, seed: int | None = None,
                 epochs: range = range(1), views: Views | None = None,
                 replicas: tf.distribute.InputContext | None = None) -> tf.data.Dataset:
    """The batches of (images, targets), gathered by index: from the images on disk for a
    ``ShardedArray`` (only the rows of each batch are read), or from one TF copy of an array
    in memory. Without a seed: one pass in order (validation). With a seed: the batches of
    ``epochs``, each epoch in its own order, a function of (seed, epoch number) only, so a run
    resumed at epoch k reads exactly the batches an uninterrupted run reads.

    With ``views``, each sample is the view ``views.choice(seed, epoch)`` picks for it,
    built on the fly, and every target but the labels is given per view ([images, views, ...]):
    the teacher's cached output for exactly that view. A mixed view (``views.mixed``) adds its
    partner's label and the share of its own (``PARTNER_LABELS``, ``LABEL_WEIGHT``): the mixed label.

    With ``replicas`` (a strategy's input context for this worker, several replicas), the
    elements are this worker's replicas' shares of each global batch in turn (see
    ``_replica_share``), and the training epochs hold full global batches only."""
    targets = {key: _as_target(key, value) for key, value in targets.items()}
    share = _replica_share(replicas)
    # Everything the batch reads: in memory, one TF copy each; on disk (the prepared images, the
    # teacher's cached outputs), the batch's rows of all of them in one read (_row_readers).
    readers = _row_readers({IMAGES: x, **targets})
    n = len(x)
    mixed = views is not None and views.mixed
    if mixed:  # a mixed view reads its partner image too, and its label for the mixed label
        partners = _row_readers({IMAGES: x, LABELS: targets[LABELS]})
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


IMAGES = "images"


def _row_readers(arrays: Mapping[str, Images]):
    """idx -> {name: the rows idx of that array}, as a TF function of the index batch. Arrays in
    memory are gathered from one TF copy (the images' shared copy, _images_as_tensor; a constant
    for a target); arrays on disk (a ShardedArray, kdflow.soft_targets.TopKLogits: anything with
    ``take``) are read by one ``tf.numpy_function`` call for all of them: a call per array and
    batch cost the default student's distill epoch ~9% over scratch's (docs/performance.md)."""
    in_memory = {key: (_images_as_tensor(value) if key == IMAGES else tf.constant(value))
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


_images_tensor: tuple[np.ndarray, tf.Variable | tf.Tensor] | None = None  # (array, its TF copy)


def _images_as_tensor(x: np.ndarray) -> tf.Variable | tf.Tensor:
    """The training images as one TF tensor, made once for the array a stage trains all its
    repeats on. A (non-trainable) variable: a tf.data function that captures a constant embeds
    a copy of it in every dataset's graph, which grew the distill stage by ~20 MiB over five
    repeats; a variable is captured as a handle. Under a distribution strategy a variable
    would be mirrored onto every replica, so there it stays a constant."""
    global _images_tensor
    if _images_tensor is None or _images_tensor[0] is not x:
        if tf.distribute.has_strategy():
            tensor = tf.constant(x)
        else:
            tensor = tf.Variable(x, trainable=False, name="training_images")
        _images_tensor = (x, tensor)  # keeps the array alive, so identity means same contents
    return _images_tensor[1]


def _steps_per_execution(steps_per_epoch: int) -> int:
    """Steps per compiled call: the largest divisor of the epoch's steps up to
    STEPS_PER_EXECUTION, so that a call never crosses an epoch boundary of the one dataset
    that spans all epochs (see make_dataset)."""
    return max(d for d in range(1, STEPS_PER_EXECUTION + 1) if steps_per_epoch % d == 0)


class _StopOnNaN(keras.callbacks.Callback):
    """Stop as soon as the training or validation loss is not finite, so a diverged model is
    never saved."""

    def _check(self, logs, keys):
        if any(k in (logs or {}) and not math.isfinite(float(logs[k])) for k in keys):
            self.model.stop_training = True
            self.model.diverged = True

    def on_train_batch_end(self, batch, logs=None):
        self._check(logs, ("loss",))

    def on_epoch_end(self, epoch, logs=None):
        self._check(logs, ("loss", "val_loss"))


class _Steps:
    """The compiled training and validation steps of one model under one strategy (see the
    module docstring): traced once, reused by every later ``fit`` with the same setup."""

    def __init__(self, model: TrainingModel, strategy: tf.distribute.Strategy, steps_per_call: int):
        replicas = strategy.num_replicas_in_sync

        def track_loss(x, loss):
            # As Keras' train_step: a replica's loss is divided by the global batch, so times the
            # replicas it is the replica's mean, weighted by the replica's batch size.
            model.loss_tracker.update_state(loss * replicas if replicas > 1 else loss, sample_weight=tf.shape(x)[0])

        def train_step(batch):
            x, y = batch
            with tf.GradientTape() as tape:
                y_pred = model(x, training=True)
                loss = model.compute_loss(x, y, y_pred, training=True)  # / the global batch: scaled once
                track_loss(x, loss)
                if isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer):  # mixed_float16
                    loss = model.optimizer.scale_loss(loss)  # apply_gradients unscales (and skips inf steps)
            variables = model.trainable_variables
            model.optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))  # all-reduces
            model.compute_metrics(x, y, y_pred)

        def test_step(batch):
            x, y = batch
            y_pred = model(x, training=False)
            track_loss(x, model.compute_loss(x, y, y_pred, training=False))
            model.compute_metrics(x, y, y_pred)

        @tf.function
        def train(iterator):
            for _ in tf.range(steps_per_call):
                strategy.run(train_step, args=(next(iterator),))

        self.train = train
        self.test = tf.function(lambda batch: strategy.run(test_step, args=(batch,)), reduce_retracing=True)
        self.steps_per_call = steps_per_call


def _same_on_every_worker(strategy: tf.distribute.Strategy, value: int) -> bool:
    """Whether every replica holds the same ``value``: n * sum(v^2) == sum(v)^2 only when all
    n values are equal. All-reduced, so every worker reaches the same answer."""
    @tf.function
    def all_reduce(v):
        per_replica = strategy.run(lambda: tf.stack([v, v * v, tf.ones_like(v)]))
        return strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)
    total, squares, n = all_reduce(tf.constant(value, tf.int64)).numpy()
    return n * squares == total * total


def _metrics(model: TrainingModel, prefix: str = "") -> dict[str, float]:
    """The model's tracked terms, read outside the replicas (summed over them), as floats."""
    return {prefix + name: float(value) for name, value in model.get_metrics_result().items()}


def fit(
    model: TrainingModel,
    train: tuple[Images, Targets],
    val: tuple[Images, Targets],
    cfg: TrainParams,
    seed: int,
    extra_callbacks: list[keras.callbacks.Callback] = (),
    config_key: str = "train",
    checkpoint: Path | None = None,
    views: Views | None = None,
) -> dict:
    """Train ``model`` in place under the current strategy (build it in its scope); return a
    summary of the kept epoch.

    The logs hold the model's tracked terms (``loss``, ``accuracy``, ``hard_ce``, and for
    distillation ``soft_loss`` / ``hint_loss``); early stopping watches ``val_hard_ce``. With
    ``checkpoint``, the training state is saved there after every epoch and a run finds it and
    resumes (see ``kdflow.resume``). With ``views``, it trains on augmented views of the
    training images (see ``make_dataset``); validation stays un-augmented. With several
    replicas, every step is a full global batch: an epoch's last partial batch is dropped."""
    strategy = tf.distribute.get_strategy()
    replicas = strategy.num_replicas_in_sync
    x_train, t_train = train
    if cfg.batch_size % replicas:
        raise KdflowError(f"{config_key}.batch_size={cfg.batch_size}: must be a multiple of the "
                          f"{replicas} replicas (each takes an equal share of every batch)")
    steps_per_epoch = len(x_train) // cfg.batch_size if replicas > 1 else math.ceil(len(x_train) / cfg.batch_size)
    if steps_per_epoch == 0:
        raise KdflowError(f"{config_key}.batch_size={cfg.batch_size}: larger than the {len(x_train)} training images")
    setup = (cfg, steps_per_epoch, strategy)
    if getattr(model, "_kdflow_fit_setup", None) == setup:
        # Fitted before with this very setup (the next repeat of a student stage): keep the
        # traced steps and start from a fresh optimizer state. Tracing anew costs seconds per
        # repeat for the default student on 2 cores.
        for variable in model.optimizer.variables:
            variable.assign(tf.zeros_like(variable))
        if isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer):
            model.optimizer.dynamic_scale.assign(model.optimizer.initial_scale)
    else:
        schedule = keras.optimizers.schedules.CosineDecay(
            cfg.learning_rate, decay_steps=cfg.epochs * steps_per_epoch, alpha=cfg.lr_floor
        )
        model.optimizer = keras.optimizers.Adam(schedule, amsgrad=cfg.amsgrad)
        if keras.mixed_precision.dtype_policy().name == "mixed_float16":  # as Keras' compile does
            model.optimizer = keras.optimizers.LossScaleOptimizer(model.optimizer)
        model.optimizer.build(model.trainable_variables)
        model._kdflow_steps = _Steps(model, strategy, _steps_per_execution(steps_per_epoch))
        model._kdflow_fit_setup = setup
    steps = model._kdflow_steps
    early_stopping = None
    if cfg.patience is not None:
        early_stopping = keras.callbacks.EarlyStopping(
            monitor=MONITOR, mode="min", patience=cfg.patience, restore_best_weights=True
        )
    # Loggers (dvclive) get the resumed epochs' logs replayed, so their curves start at epoch 1.
    replay_to = [c for c in extra_callbacks if getattr(c, "replay_on_resume", False)]
    state = EpochCheckpoint(checkpoint, early_stopping, replay_to)
    state.restore(model, cfg.epochs)
    if replicas > 1 and not _same_on_every_worker(strategy, 2 * state.first_epoch + state.finished):
        raise KdflowError(
            f"{model.name}: the workers found different checkpoints to resume from: every worker must see the "
            "chief's .kdflow/runs folder (a shared file system), or delete it there to start over")
    model.diverged = False
    if not state.finished:
        callbacks = [_StopOnNaN(), LearningRateLogger(), *extra_callbacks]
        # the checkpoint comes last: it saves what the others updated at each epoch end
        callbacks += [early_stopping, state] if early_stopping else [state]

        epochs = range(state.first_epoch, cfg.epochs)
        train_batches = iter(strategy.distribute_datasets_from_function(
            lambda context: make_dataset(x_train, t_train, cfg.batch_size, seed, epochs, views, context)))
        val_batches = strategy.distribute_datasets_from_function(
            lambda context: make_dataset(*val, batch_size=INFERENCE_BATCH_SIZE, replicas=context))
        _run_epochs(model, steps, train_batches, val_batches, epochs, steps_per_epoch, callbacks)
    if model.diverged or not all(np.isfinite(w).all() for w in model.get_weights()):
        raise KdflowError(
            f"{config_key}.learning_rate={cfg.learning_rate:g}: training diverged (loss is NaN/inf); "
            "lower the learning rate, or check the input scale (pixels should be in [0, 1]). No model was saved"
        )
    history = {key: [epoch_logs[key] for epoch_logs in state.history] for key in state.history[0]}
    epochs_run = len(state.history)
    monitored = history.get(MONITOR)
    best = int(np.argmin(monitored)) if cfg.patience is not None and monitored else epochs_run - 1
    return {
        "epochs_run": epochs_run,
        "best_epoch": best + 1,
        **{name: round(float(values[best]), 6) for name, values in sorted(history.items())},
    }


def _run_epochs(model: TrainingModel, steps: _Steps, train_batches, val_batches, epochs: range,
                steps_per_epoch: int, callbacks: list[keras.callbacks.Callback]) -> None:
    """The epochs of ``fit``, calling the callbacks where Keras' ``fit`` calls them."""
    callbacks = keras.callbacks.CallbackList(
        callbacks, add_progbar=True, model=model, epochs=epochs.stop, steps=steps_per_epoch,
        # Progress bar in a terminal, one line per epoch in logs (CI, dvc queue logs).
        verbose=1 if sys.stdout.isatty() else 2)
    model.stop_training = False
    callbacks.on_train_begin()
    logs = {}
    for epoch in epochs:
        model.reset_metrics()
        callbacks.on_epoch_begin(epoch)
        for step in range(0, steps_per_epoch, steps.steps_per_call):
            callbacks.on_train_batch_begin(step)
            steps.train(train_batches)
            callbacks.on_train_batch_end(step + steps.steps_per_call - 1, _metrics(model))
            if model.stop_training:
                break
        logs = _metrics(model)
        model.reset_metrics()
        for batch in val_batches:
            steps.test(batch)
        logs.update(_metrics(model, prefix="val_"))
        callbacks.on_epoch_end(epoch, logs)
        if model.stop_training:
            break
    callbacks.on_train_end(logs)


def fit_prepared(model: TrainingModel, data: Prepared, cfg: TrainParams, config_key: str, seed: int,
                 extra_targets: Mapping[str, Targets] | None = None, callbacks=(), checkpoint: Path | None = None,
                 views: Views | None = None) -> dict:
    """``fit`` on the prepared train and val splits: their labels, plus ``extra_targets`` per
    split (the teacher's outputs for distillation, kdflow.distillation.teacher_targets)."""
    def targets(split: str) -> dict:
        return {LABELS: data.xy(split)[1], **((extra_targets or {}).get(split) or {})}

    return fit(model, (data.xy("train")[0], targets("train")), (data.xy("val")[0], targets("val")), cfg,
               seed=seed, extra_callbacks=list(callbacks), config_key=config_key, checkpoint=checkpoint, views=views)
