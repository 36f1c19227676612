"""The distilled students' objective: the labels, and the teacher's outputs mixed in by the method
(kdflow.distill.methods):

    loss = alpha * CE(labels) + (1 - alpha) * warm-up(epoch) * soft_loss + the method's other terms

The targets of every batch add ``teacher_logits`` (the teacher's cached logits for exactly the
view the student sees, kdflow.views.cache) and, for a feature method, each feature's teacher side.

An image without a label (data.unlabeled, data.labels_per_class: label NO_LABEL) takes the
teacher's label for the view the student sees, its argmax, wherever the loss reads a label (the
hard term, a method's target class, a mixed view's label): alpha then runs from the soft targets
alone (0) to pseudo-labels alone (1) on those images, and weighs the labels as before on the
others (kdflow.training.objective.teacher_targets; its ``PseudoLabels`` is that hard term alone,
the pseudo-labelled students' objective, outside the KD methods' package so that editing a method
never retrains that baseline).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import keras
import tensorflow as tf

from kdflow.core import KdflowError
from kdflow.distill.methods import Method, Seen
from kdflow.training.objective import LABELS, Objective, label_ce, teacher_targets
from kdflow.views.cache import TEACHER_LOGITS, feature_target


@dataclass(frozen=True)
class Distillation(Objective):
    """Without features the training model outputs the logits; with a feature method, the logits
    then each feature's student side (whose projection, if any, exists only while training)."""

    method: Method | None = None
    alpha: float = 1.0
    # each Feature's teacher side, its shape per sample (the student side is built to match it)
    feature_shapes: Mapping[str, tuple] = field(default_factory=dict)
    # the soft term's weight, ramped up by `Warmup` for a method with a published warm-up
    soft_weight: tf.Variable | None = None
    # views.teacher = online: the teacher itself, run on every training batch (the exact views
    # the student sees) instead of its cached outputs
    teacher: keras.Model | None = None

    @property
    def terms(self) -> tuple[str, ...]:
        return ("hard_ce", *self.method.names)

    def targets(self, x, y: dict) -> dict:
        return teacher_targets(self.teacher, x, y)

    def per_sample(self, y: dict, y_pred, track) -> tf.Tensor:
        features = self.method.features
        logits, *student_sides = y_pred if features else (y_pred,)
        hard = label_ce(y, logits)
        track("hard_ce", hard)
        per_sample = hard
        seen = Seen(y[LABELS], y[TEACHER_LOGITS], logits,
                    teacher={f.name: y[feature_target(f.name)] for f in features},
                    student={f.name: side for f, side in zip(features, student_sides)})
        terms = self.method.terms(seen)
        for name in self.method.names:
            track(name, terms[name])  # soft_loss is logged even at alpha = 1, where its weight is zero
        if self.alpha < 1.0:
            soft = terms["soft_loss"]
            weighted = soft if self.soft_weight is None else self.soft_weight * soft
            per_sample = self.alpha * hard + (1.0 - self.alpha) * weighted
        for name in self.method.names[1:]:
            per_sample += terms[name]
        return per_sample

    def logits(self, y_pred) -> tf.Tensor:
        return y_pred[0] if self.method.features else y_pred

    def outputs(self, network: keras.Model):
        if not self.method.features:
            return network.outputs[0]
        sides = []
        for feature in self.method.features:
            key = f"{feature.param}.student_layer"
            try:
                output = network.get_layer(feature.student_layer).output
            except ValueError:
                names = ", ".join(candidate.name for candidate in network.layers)
                raise KdflowError(f"{key} = {feature.student_layer!r} is not a student layer; "
                                  f"it has: {names}") from None
            try:
                sides.append(feature.student(output, self.feature_shapes[feature.name]))
            except KdflowError as exc:
                raise KdflowError(f"{key} = {feature.student_layer!r} {exc}") from None
        return [network.outputs[0], *sides]

    def callbacks(self) -> list[keras.callbacks.Callback]:
        return [Warmup(self.soft_weight, self.method.warmup_epochs)] if self.soft_weight is not None else []


def objective(method: Method, alpha: float, feature_shapes: Mapping[str, tuple] | None = None,
              teacher: keras.Model | None = None) -> Distillation:
    """The distilled students' objective; ``teacher``: run online on every batch. Make it in the
    strategy's scope (it may hold a variable)."""
    weight = None
    if method.warmup_epochs:
        weight = tf.Variable(1.0, trainable=False, dtype=tf.float32, name="soft_term_weight")
    return Distillation(method=method, alpha=alpha, feature_shapes=dict(feature_shapes or {}), soft_weight=weight,
                        teacher=teacher)


def feature_shapes(targets: Mapping[str, Mapping], method: Method) -> dict[str, tuple]:
    """Each feature's teacher side, its shape per sample: read off the validation targets (one row
    per image; the training targets have one per view)."""
    return {f.name: tuple(targets["val"][feature_target(f.name)].shape[1:]) for f in method.features}


class Warmup(keras.callbacks.Callback):
    """Ramp the soft term's weight linearly from 1/epochs to 1 over the first ``epochs`` epochs."""

    def __init__(self, weight: tf.Variable, epochs: int):
        super().__init__()
        self.weight, self.epochs = weight, epochs

    def on_epoch_begin(self, epoch, logs=None):
        self.weight.assign(min((epoch + 1) / self.epochs, 1.0))
