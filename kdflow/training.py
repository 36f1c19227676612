"""The one training loop: Keras ``fit`` with Adam, cosine decay and early stopping.

Teacher, scratch student and distilled student all train here, each as a
``kdflow.objective.TrainingModel``; they differ only in its objective and in the targets
they are given (labels, plus the teacher's cached outputs for distillation).
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Mapping

import keras
import numpy as np
import tensorflow as tf

from kdflow.errors import KdflowError
from kdflow.evaluation import INFERENCE_BATCH_SIZE
from kdflow.objective import LABELS, TrainingModel
from kdflow.params import TrainParams
from kdflow.resume import EpochCheckpoint
from kdflow.tracking import LearningRateLogger
from kdflow.views import Views
from kdflow.views import apply as apply_view
from kdflow.views import choice as view_choice

# The quantity early stopping watches: the validation cross-entropy with the hard labels
# (for the distilled student too, as in the reference repo: its KD term is no model-selection signal).
MONITOR = "val_hard_ce"
# Training steps per compiled call: with the default small student, Python dispatch between
# steps was ~40% of a step on 2 CPU cores (docs/performance.md). XLA (jit_compile) stays off:
# Keras silently disables it while TF op determinism is on.
STEPS_PER_EXECUTION = 16

Targets = Mapping[str, np.ndarray]  # see kdflow.objective: labels (+ teacher_logits, teacher_features)


def make_dataset(x: np.ndarray, targets: Targets, batch_size: int, seed: int | None = None,
                 epochs: range = range(1), views: Views | None = None) -> tf.data.Dataset:
    """In-memory tf.data pipeline. Without a seed: one pass in order (validation). With a seed:
    the batches of ``epochs``, each epoch in its own order, a function of (seed, epoch number)
    only, so a run resumed at epoch k reads exactly the batches an uninterrupted run reads.
    Batches are gathered by index from the arrays loaded once (no shuffle buffer copy).

    With ``views``, each sample is the view ``kdflow.views.choice(seed, epoch)`` picks for it,
    built on the fly, and every target but the labels is given per view ([images, views, ...]):
    the teacher's cached output for exactly that view."""
    targets = {key: _as_target(key, value) for key, value in targets.items()}
    if seed is None:
        return tf.data.Dataset.from_tensor_slices((x, targets)).batch(batch_size).prefetch(tf.data.AUTOTUNE)
    x_all, t_all = _images_as_tensor(x), {key: tf.constant(value) for key, value in targets.items()}
    n = len(x)
    if views is not None:
        view_table = tf.constant(views.table)
        for key, value in targets.items():
            if key != LABELS and value.shape[:2] != views.table.shape[:2]:
                raise KdflowError(f"{key} has shape {value.shape}: expected one row per view "
                                  f"{views.table.shape[:2]}: rerun `dvc repro soft_targets`")

    def epoch_batches(epoch):
        seed_pair = tf.stack([tf.constant(seed, tf.int64), epoch])
        order = tf.random.experimental.stateless_shuffle(tf.range(n), seed=seed_pair)
        if views is None:
            return tf.data.Dataset.from_tensor_slices(order).batch(batch_size)
        chosen = tf.gather(view_choice(seed, epoch, n, views.count), order)
        return tf.data.Dataset.from_tensor_slices((order, chosen)).batch(batch_size)

    def gather(idx, view=None):
        images = tf.gather(x_all, idx)
        if view is None:
            return images, {key: tf.gather(t, idx) for key, t in t_all.items()}
        at = tf.stack([idx, view], axis=1)
        images = apply_view(images, tf.gather_nd(view_table, at), views.max_shift)
        return images, {key: tf.gather(t, idx) if key == LABELS else tf.gather_nd(t, at) for key, t in t_all.items()}

    ds = tf.data.Dataset.range(epochs.start, epochs.stop).flat_map(epoch_batches)
    # Sequential map: a parallel one made Ctrl-C mid-epoch abort in glibc during shutdown.
    ds = ds.map(gather)
    return ds.prefetch(tf.data.AUTOTUNE)


def _as_target(key: str, value: np.ndarray) -> np.ndarray:
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
    STEPS_PER_EXECUTION. Keras runs whole calls, so a call must never cross an epoch boundary
    of the one dataset that spans all epochs (see make_dataset)."""
    # Keras' multi-step loop fails on a distributed iterator with several replicas in TF 2.21
    # ("You must feed a value for placeholder tensor ... while/cond/Placeholder"): one step there.
    if tf.distribute.has_strategy() and tf.distribute.get_strategy().num_replicas_in_sync > 1:
        return 1
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


def fit(
    model: TrainingModel,
    train: tuple[np.ndarray, Targets],
    val: tuple[np.ndarray, Targets],
    cfg: TrainParams,
    seed: int,
    extra_callbacks: list[keras.callbacks.Callback] = (),
    config_key: str = "train",
    jit_compile: bool = False,
    checkpoint: Path | None = None,
    views: Views | None = None,
) -> dict:
    """Train ``model`` in place; return a summary of the kept epoch.

    The logs hold the model's tracked terms (``loss``, ``accuracy``, ``hard_ce``, and for
    distillation ``soft_loss`` / ``hint_loss``); early stopping watches ``val_hard_ce``. With
    ``checkpoint``, the training state is saved there after every epoch and a run finds it and
    resumes (see ``kdflow.resume``). With ``views``, it trains on augmented views of the
    training images (see ``make_dataset``); validation stays un-augmented."""
    x_train, t_train = train
    steps_per_epoch = math.ceil(len(x_train) / cfg.batch_size)
    setup = (cfg, steps_per_epoch, jit_compile)
    if getattr(model, "_kdflow_fit_setup", None) == setup:
        # Fitted before with this very setup (the next repeat of a student stage): keep the
        # compiled (traced) training step and start from a fresh optimizer state. A new compile
        # would retrace, seconds per repeat for the default student on 2 cores.
        for variable in model.optimizer.variables:
            variable.assign(tf.zeros_like(variable))
    else:
        schedule = keras.optimizers.schedules.CosineDecay(
            cfg.learning_rate, decay_steps=cfg.epochs * steps_per_epoch, alpha=cfg.lr_floor
        )
        model.compile(
            optimizer=keras.optimizers.Adam(schedule, amsgrad=cfg.amsgrad),
            steps_per_execution=_steps_per_execution(steps_per_epoch),
            jit_compile=jit_compile,
        )
        model._kdflow_fit_setup = setup
    early_stopping = None
    if cfg.patience is not None:
        early_stopping = keras.callbacks.EarlyStopping(
            monitor=MONITOR, mode="min", patience=cfg.patience, restore_best_weights=True
        )
    # Loggers (dvclive) get the resumed epochs' logs replayed, so their curves start at epoch 1.
    replay_to = [c for c in extra_callbacks if getattr(c, "replay_on_resume", False)]
    state = EpochCheckpoint(checkpoint, early_stopping, replay_to)
    state.restore(model, cfg.epochs)
    model.diverged = False
    if not state.finished:
        callbacks = [_StopOnNaN(), LearningRateLogger(), *extra_callbacks]
        # the checkpoint comes last: it saves what the others updated at each epoch end
        callbacks += [early_stopping, state] if early_stopping else [state]
        model.fit(
            make_dataset(x_train, t_train, cfg.batch_size, seed, epochs=range(state.first_epoch, cfg.epochs),
                         views=views),
            steps_per_epoch=steps_per_epoch,
            initial_epoch=state.first_epoch,
            shuffle=False,  # make_dataset orders the batches (a seeded order per epoch)
            validation_data=make_dataset(*val, batch_size=INFERENCE_BATCH_SIZE),
            epochs=cfg.epochs,
            callbacks=callbacks,
            # Progress bar in a terminal, one line per epoch in logs (CI, dvc queue logs).
            verbose=1 if sys.stdout.isatty() else 2,
        )
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
