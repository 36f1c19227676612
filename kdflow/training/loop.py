"""The one training loop, for every strategy: TensorFlow's custom-loop pattern around Keras 3
objects. Each step runs in ``strategy.run`` on every replica; ``optimizer.apply_gradients``
sums the replicas' gradients; metrics are read outside the replicas. Keras callbacks (early
stopping, dvclive, the epoch checkpoint, the progress line) are driven as ``fit`` drives them.

Keras' own ``fit`` is not used because it fails under ``MultiWorkerMirroredStrategy``
(keras-team/keras#20585). This step computes what ``fit``'s does; traced into another graph, its
weights differ from ``fit``'s by float round-off.

Teacher, scratch students and distilled students all train here, each as a
``kdflow.training.objective.TrainingModel``; they differ only in its objective and in the targets
they are given (the labels, plus the teacher's outputs for distillation).
"""

from __future__ import annotations

import math
import shutil
import sys
from pathlib import Path
from typing import Mapping

import keras
import numpy as np
import tensorflow as tf

from kdflow.core import KdflowError
from kdflow.core.io import writes_discarded
from kdflow.core.params import TrainParams
from kdflow.core.prepared import Prepared
from kdflow.models.logits import INFERENCE_BATCH_SIZE
from kdflow.training.curves import LearningRateLogger
from kdflow.training.inputs import ImageTensors, Images, Targets, ViewSource, make_dataset
from kdflow.training.objective import LABELS, TrainingModel
from kdflow.training.resume import EpochCheckpoint

# The quantity early stopping watches: the validation cross-entropy with the hard labels
# (for the distilled students too, as in the reference repo: the KD term is no model-selection signal).
MONITOR = "val_hard_ce"
# Training steps per compiled call, at most: Python dispatch between steps is a large share of a
# small student's step on a CPU (docs/performance.md).
STEPS_PER_EXECUTION = 16


class _StopOnNaN(keras.callbacks.Callback):
    """Stop as soon as the training or validation loss is not finite, so a diverged model is
    never saved."""

    def __init__(self):
        super().__init__()
        self.diverged = False

    def _check(self, logs, keys):
        if any(k in (logs or {}) and not math.isfinite(float(logs[k])) for k in keys):
            self.model.stop_training = True
            self.diverged = True

    def on_train_batch_end(self, batch, logs=None):
        self._check(logs, ("loss",))

    def on_epoch_end(self, epoch, logs=None):
        self._check(logs, ("loss", "val_loss"))


class _Steps:
    """The compiled training and validation steps of one model under one strategy (see the
    module docstring)."""

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


def _steps_per_execution(steps_per_epoch: int) -> int:
    """Steps per compiled call: the largest divisor of the epoch's steps up to
    STEPS_PER_EXECUTION, so that a call never crosses an epoch boundary of the one dataset
    that spans all epochs (see make_dataset)."""
    return max(d for d in range(1, STEPS_PER_EXECUTION + 1) if steps_per_epoch % d == 0)


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


class Trainer:
    """Trains ``model`` (built in the current strategy's scope) on one schedule, on training
    splits of ``train_images`` images. Its optimizer and compiled steps are made once and reused
    by every ``fit`` (the repeats of a student stage), each starting from a fresh optimizer
    state: tracing anew costs seconds per repeat on a CPU. ``config_key`` names the schedule's
    section in errors."""

    def __init__(self, model: TrainingModel, schedule: TrainParams, train_images: int, config_key: str):
        strategy = tf.distribute.get_strategy()
        replicas = strategy.num_replicas_in_sync
        if schedule.batch_size % replicas:
            raise KdflowError(f"{config_key}.batch_size={schedule.batch_size}: must be a multiple of the "
                              f"{replicas} replicas (each takes an equal share of every batch)")
        steps_per_epoch = (train_images // schedule.batch_size if replicas > 1
                           else math.ceil(train_images / schedule.batch_size))
        if steps_per_epoch == 0:
            raise KdflowError(f"{config_key}.batch_size={schedule.batch_size}: larger than the {train_images} "
                              "training images")
        cosine = keras.optimizers.schedules.CosineDecay(
            schedule.learning_rate, decay_steps=schedule.epochs * steps_per_epoch, alpha=schedule.lr_floor)
        model.optimizer = keras.optimizers.Adam(cosine, amsgrad=schedule.amsgrad)
        if keras.mixed_precision.dtype_policy().name == "mixed_float16":  # as Keras' compile does
            model.optimizer = keras.optimizers.LossScaleOptimizer(model.optimizer)
        model.optimizer.build(model.trainable_variables)
        self.model, self.schedule, self.config_key = model, schedule, config_key
        self.strategy, self.steps_per_epoch = strategy, steps_per_epoch
        self.steps = _Steps(model, strategy, _steps_per_execution(steps_per_epoch))
        self.tensors = ImageTensors()
        self._fitted = False

    def fit(self, train: tuple[Images, Targets], val: tuple[Images, Targets], seed: int,
            callbacks: list[keras.callbacks.Callback] = (), loggers: list[keras.callbacks.Callback] = (),
            checkpoint: Path | None = None, views: ViewSource | None = None,
            tensorboard: Path | None = None) -> dict:
        """Train the model in place; return a summary of the kept epoch.

        The logs hold the model's tracked terms (``loss``, ``accuracy``, ``hard_ce``, and each
        term of a distillation method); early stopping watches ``val_hard_ce``. ``loggers`` (the
        curves) get the epochs of a resumed run replayed. With ``checkpoint``, the training state
        is saved there after every epoch and a run finds it and resumes (kdflow.training.resume).
        With ``tensorboard``, Keras' TensorBoard callback writes the epochs' logs and weight
        histograms there (emptied first unless the run resumes).
        With ``views``, it trains on augmented views of the training images (see make_dataset);
        validation stays un-augmented. With several replicas, every step is a full global batch:
        an epoch's last partial batch is dropped."""
        model, schedule, strategy = self.model, self.schedule, self.strategy
        if self._fitted:  # the next repeat: a fresh optimizer state, the same compiled steps
            for variable in model.optimizer.variables:
                variable.assign(tf.zeros_like(variable))
            if isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer):
                model.optimizer.dynamic_scale.assign(model.optimizer.initial_scale)
        self._fitted = True
        early_stopping = None
        if schedule.patience is not None:
            early_stopping = keras.callbacks.EarlyStopping(
                monitor=MONITOR, mode="min", patience=schedule.patience, restore_best_weights=True)
        stop_on_nan = _StopOnNaN()
        state = EpochCheckpoint(checkpoint, early_stopping, loggers, diverged=lambda: stop_on_nan.diverged)
        state.restore(model, schedule.epochs)
        if strategy.num_replicas_in_sync > 1 and not _same_on_every_worker(strategy, 2 * state.first_epoch + state.finished):
            raise KdflowError(
                f"{model.name}: the workers found different checkpoints to resume from: every worker must see the "
                "chief's .kdflow/runs folder (a shared file system), or delete it there to start over")
        if not state.finished:
            everyone = [stop_on_nan, LearningRateLogger(), *callbacks, *loggers]
            if tensorboard is not None and not writes_discarded():  # the chief's alone
                if state.first_epoch == 0:
                    shutil.rmtree(tensorboard, ignore_errors=True)
                everyone.append(keras.callbacks.TensorBoard(str(tensorboard), histogram_freq=1, write_graph=False))
            # the checkpoint comes last: it saves what the others updated at each epoch end
            everyone += [early_stopping, state] if early_stopping else [state]
            epochs = range(state.first_epoch, schedule.epochs)
            train_batches = iter(strategy.distribute_datasets_from_function(
                lambda context: make_dataset(*train, schedule.batch_size, seed, epochs, views, context, self.tensors)))
            val_batches = strategy.distribute_datasets_from_function(
                lambda context: make_dataset(*val, batch_size=INFERENCE_BATCH_SIZE, replicas=context,
                                             tensors=self.tensors))
            self._run_epochs(train_batches, val_batches, epochs, everyone)
        if stop_on_nan.diverged or not all(np.isfinite(w).all() for w in model.get_weights()):
            raise KdflowError(
                f"{self.config_key}.learning_rate={schedule.learning_rate:g}: training diverged (loss is NaN/inf); "
                "lower the learning rate, or check the input scale (pixels should be in [0, 1]). No model was saved"
            )
        history = {key: [epoch_logs[key] for epoch_logs in state.history] for key in state.history[0]}
        epochs_run = len(state.history)
        monitored = history.get(MONITOR)
        best = int(np.argmin(monitored)) if schedule.patience is not None and monitored else epochs_run - 1
        return {
            "epochs_run": epochs_run,
            "best_epoch": best + 1,
            **{name: round(float(values[best]), 6) for name, values in sorted(history.items())},
        }

    def fit_prepared(self, data: Prepared, seed: int, targets: Mapping[str, Targets] | None = None,
                     **fit_options) -> dict:
        """``fit`` on the prepared train and val splits: their labels, plus ``targets`` per split
        (the teacher's outputs for the distilled students)."""
        def split(name: str) -> tuple[Images, dict]:
            x, y = data.xy(name)
            return x, {LABELS: y, **((targets or {}).get(name) or {})}

        return self.fit(split("train"), split("val"), seed, **fit_options)

    def _run_epochs(self, train_batches, val_batches, epochs: range, callbacks: list) -> None:
        """The epochs of ``fit``, calling the callbacks where Keras' ``fit`` calls them."""
        model, steps = self.model, self.steps
        callbacks = keras.callbacks.CallbackList(
            callbacks, add_progbar=True, model=model, epochs=epochs.stop, steps=self.steps_per_epoch,
            # Progress bar in a terminal, one line per epoch in logs (CI, dvc queue logs).
            verbose=1 if sys.stdout.isatty() else 2)
        model.stop_training = False
        callbacks.on_train_begin()
        logs = {}
        for epoch in epochs:
            model.reset_metrics()
            callbacks.on_epoch_begin(epoch)
            for step in range(0, self.steps_per_epoch, steps.steps_per_call):
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
