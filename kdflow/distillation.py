"""The distilled students' objective: the labels and the teacher's cached outputs, mixed by the
chosen method (kdflow.losses).

    loss = alpha * CE(labels) + (1 - alpha) * soft_weight * soft_term + hint_weight * hint

The targets of every batch add ``teacher_logits`` (the teacher's cached logits for exactly the
view the student sees) and, for a FitNets hint, ``teacher_features``. Only the `distill` stage
imports this module.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import keras
import numpy as np
import tensorflow as tf

from kdflow import losses, students
from kdflow.data import Prepared
from kdflow.errors import KdflowError
from kdflow.objective import LABELS, Objective, label_ce

TEACHER_LOGITS, TEACHER_FEATURES = "teacher_logits", "teacher_features"


@dataclass(frozen=True)
class Distillation(Objective):
    """Without a hint the training model outputs the logits; with one, ``[logits, the learned
    linear projection of the method's student layer to the teacher's feature width]`` (the
    projection exists only while training)."""

    alpha: float = 1.0
    method: losses.Method | None = None
    # The soft term's weight, ramped up by `Warmup` for methods that publish a warm-up.
    soft_weight: tf.Variable | None = None
    hint_width: int = 0  # the teacher features' width, for the hint's projection
    # views.teacher = online: the teacher itself, run on every training batch (the exact views
    # the student sees) instead of its cached outputs
    teacher: keras.Model | None = None

    @property
    def hinted(self) -> bool:
        return self.method.hinted

    @property
    def terms(self) -> tuple[str, ...]:
        return ("hard_ce", "soft_loss", "hint_loss") if self.hinted else ("hard_ce", "soft_loss")

    def targets(self, x, y: dict) -> dict:
        if self.teacher is None or TEACHER_LOGITS in y:  # cached (validation's always are)
            return y
        return {**y, TEACHER_LOGITS: tf.stop_gradient(tf.cast(self.teacher(x, training=False), tf.float32))}

    def per_sample(self, y: dict, y_pred, track) -> tf.Tensor:
        logits, hint = y_pred if self.hinted else (y_pred, None)
        labels = y[LABELS]
        hard = label_ce(y, logits)
        track("hard_ce", hard)
        per_sample = hard
        soft = self.method.term(labels, y[TEACHER_LOGITS], logits)
        track("soft_loss", soft)  # logged even at alpha = 1, where its weight is zero
        if self.alpha < 1.0:
            weighted = soft if self.soft_weight is None else self.soft_weight * soft
            per_sample = self.alpha * hard + (1.0 - self.alpha) * weighted
        if hint is not None:
            hint_loss = losses.hint_mse(y[TEACHER_FEATURES], hint)
            track("hint_loss", hint_loss)
            per_sample += self.method.hint_weight * hint_loss
        return per_sample

    def logits(self, y_pred) -> tf.Tensor:
        return y_pred[0] if self.hinted else y_pred

    def outputs(self, network: keras.Model):
        if not self.hinted:
            return network.outputs[0]
        layer = self.method.student_layer
        try:
            hint = network.get_layer(layer).output
        except ValueError:
            names = ", ".join(candidate.name for candidate in network.layers)
            raise KdflowError(f"distill.fitnet.student_layer = {layer!r} is not a student layer; "
                              f"it has: {names}") from None
        if len(hint.shape) > 2:
            hint = keras.layers.Flatten(name="hint_flatten")(hint)
        return [network.outputs[0], keras.layers.Dense(self.hint_width, name="hint_projection")(hint)]

    def callbacks(self) -> list[keras.callbacks.Callback]:
        return [Warmup(self.soft_weight, self.method.warmup_epochs)] if self.soft_weight is not None else []


def objective(alpha: float, temperature: float, cfg, hint_width: int = 0,
              teacher: keras.Model | None = None) -> Distillation:
    """The distill stage's objective for ``cfg`` (the validated ``distill`` section); a hint of
    ``hint_width`` features when the method has one; ``teacher``: run online on every batch.
    Create it under the strategy's scope (it may hold a variable)."""
    method = losses.method(cfg, temperature)
    if teacher is not None and method.hinted:
        raise KdflowError(f"views.teacher = online: distill.method = {cfg.method} needs the teacher's features, "
                          "which only the cached teacher provides; use views.teacher: cached")
    weight = None
    if method.warmup_epochs:
        weight = tf.Variable(1.0, trainable=False, dtype=tf.float32, name="soft_term_weight")
    return Distillation(alpha=alpha, method=method, soft_weight=weight, hint_width=hint_width, teacher=teacher)


class Warmup(keras.callbacks.Callback):
    """Ramp the soft term's weight linearly from 1/epochs to 1 over the first ``epochs`` epochs."""

    def __init__(self, weight: tf.Variable, epochs: int):
        super().__init__()
        self.weight, self.epochs = weight, epochs

    def on_epoch_begin(self, epoch, logs=None):
        self.weight.assign(min((epoch + 1) / self.epochs, 1.0))


def teacher_targets(cache: dict[str, np.ndarray]) -> dict[str, dict[str, np.ndarray]]:
    """The teacher's outputs per split as training targets (kdflow.soft_targets' keys)."""
    found = {}
    for split in ("train", "val"):
        if split not in cache:  # the online teacher's training split
            continue
        found[split] = {TEACHER_LOGITS: cache[split]}
        if f"{split}_features" in cache:
            found[split][TEACHER_FEATURES] = cache[f"{split}_features"]
    return found


def train_students(cfg, train_cfg, repeats: int, seed: int, data: Prepared, cache: dict[str, np.ndarray], *,
                   alpha: float, temperature: float, distill_cfg, views=None, log_dir: Path | None = None,
                   run_dir: Path | None = None, teacher: keras.Model | None = None
                   ) -> Iterator[tuple[keras.Model, dict]]:
    """The distilled students: ``kdflow.students.train_students`` under this objective, on the
    labels and the teacher's outputs in ``cache`` (with ``train_features`` / ``val_features``
    when the method has a hint). With ``teacher`` (views.teacher = online), the cache holds the
    validation outputs only, and the teacher runs on every training batch."""
    hint_width = cache["train_features"].shape[-1] if "train_features" in cache else 0
    if teacher is not None:
        cache = {key: value for key, value in cache.items() if not key.startswith("train")}
    return students.train_students(
        cfg, train_cfg, repeats, seed, data, role="student_distilled",
        objective=lambda: objective(alpha, temperature, distill_cfg, hint_width, teacher),
        extra_targets=teacher_targets(cache), views=views, log_dir=log_dir, run_dir=run_dir)
