"""What a model trains against, written as keras.io's distillation example and Keras'
``Distiller`` write it: a model whose ``compute_loss`` receives its targets as a dict of
tensors and tracks each term of the loss with a ``keras.metrics.Mean``.

The targets of every batch hold ``labels`` (class ids; NO_LABEL for an image without one). The
teacher, the scratch students and the plain students train on the labels alone (``Objective``);
the pseudo-labelled students on the labels and the teacher's where one is missing
(``PseudoLabels``); the distilled students on kdflow.distill.objective's, which adds the
teacher's outputs. All of them train as a
``TrainingModel`` in the one loop of kdflow.training.loop; only the objective differs.
"""

from __future__ import annotations

from dataclasses import dataclass

import keras
import tensorflow as tf

from kdflow.core.prepared import TEACHER_LOGITS

LABELS = "labels"
# A mixed view's targets add its partner image's label and the share of its own label (kdflow.views.mixes)
PARTNER_LABELS, LABEL_WEIGHT = "partner_labels", "label_weight"


def hard_ce(labels: tf.Tensor, logits: tf.Tensor, label_smoothing: float = 0.0) -> tf.Tensor:
    """Cross-entropy with the hard labels (class ids), per sample; with ``label_smoothing`` s,
    against (1 - s) * one_hot + s / classes."""
    if not label_smoothing:
        return tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
    classes = tf.shape(logits)[-1]
    smoothed = tf.one_hot(labels, classes) * (1.0 - label_smoothing) + label_smoothing / tf.cast(classes, tf.float32)
    return tf.nn.softmax_cross_entropy_with_logits(labels=smoothed, logits=logits)


def label_ce(y: dict, logits: tf.Tensor, label_smoothing: float = 0.0) -> tf.Tensor:
    """``hard_ce`` with the batch's labels; for mixed views, with the mixed label w * y + (1 - w) * y'
    (mixup's and cutmix's loss: the cross-entropy is linear in its target)."""
    own = hard_ce(y[LABELS], logits, label_smoothing)
    if LABEL_WEIGHT not in y:
        return own
    weight = y[LABEL_WEIGHT]
    return weight * own + (1.0 - weight) * hard_ce(y[PARTNER_LABELS], logits, label_smoothing)


@dataclass(frozen=True)
class Objective:
    """The cross-entropy with the labels (smoothed by ``label_smoothing``: the teacher's
    train_teacher.label_smoothing), plus any regularisation losses of the model's layers.

    An objective says which terms it logs (``terms``), computes the per-sample loss from the
    targets and the model's outputs (``per_sample``, calling ``track(term, values)`` once per
    term), which output holds the logits, what the training model outputs (``outputs``) and
    which callbacks it needs during training."""

    label_smoothing: float = 0.0

    @property
    def terms(self) -> tuple[str, ...]:
        return ("hard_ce",)

    def targets(self, x, y: dict) -> dict:
        """The batch's targets as the loss reads them (an online teacher adds its outputs on x)."""
        return y

    def per_sample(self, y: dict, y_pred, track) -> tf.Tensor:
        hard = label_ce(y, y_pred, self.label_smoothing)
        track("hard_ce", hard)
        return hard

    def logits(self, y_pred) -> tf.Tensor:
        return y_pred

    def outputs(self, network: keras.Model):
        """The training model's outputs, built on ``network``'s layers."""
        return network.outputs[0]

    def callbacks(self) -> list[keras.callbacks.Callback]:
        return []


HARD_LABELS = Objective()


def with_teacher_labels(y: dict) -> dict:
    """The targets with every missing label (negative: NO_LABEL) replaced by the teacher's argmax
    on the view (a mixed view's partner's too: the teacher saw the mixture)."""
    if TEACHER_LOGITS not in y or LABELS not in y:  # nothing to label with, or nothing to label
        return y
    teacher_label = tf.argmax(y[TEACHER_LOGITS], axis=-1, output_type=y[LABELS].dtype)
    labelled = {key: tf.where(y[key] >= 0, y[key], tf.cast(teacher_label, y[key].dtype))
                for key in (LABELS, PARTNER_LABELS) if key in y}
    return {**y, **labelled}


def teacher_targets(teacher: keras.Model | None, x, y: dict) -> dict:
    """The batch's targets with the teacher's logits (run on ``x`` when ``teacher`` is online and
    they are not cached: validation's always are) and its labels where labels are missing."""
    if teacher is not None and TEACHER_LOGITS not in y:
        y = {**y, TEACHER_LOGITS: tf.stop_gradient(tf.cast(teacher(x, training=False), tf.float32))}
    return with_teacher_labels(y)


@dataclass(frozen=True)
class PseudoLabels(Objective):
    """The labels, and the teacher's label where an image has none: the pseudo-labelled students
    (Lee 2013), the baseline that uses the extra images without the soft targets. ``teacher``:
    run online (views.teacher), as for the distilled students."""

    teacher: keras.Model | None = None

    def targets(self, x, y: dict) -> dict:
        return teacher_targets(self.teacher, x, y)


class TrainingModel(keras.Model):
    """A functional model trained on dict targets under an ``Objective``. Each term is computed
    once per step; its per-sample values feed both the loss and the term's ``Mean``, so the
    logged terms (``hard_ce``, and each distillation method's) are exactly the terms in the loss."""

    def __init__(self, inputs, outputs, objective: Objective = HARD_LABELS, name: str | None = None):
        super().__init__(inputs=inputs, outputs=outputs, name=name)
        self.objective = objective
        self.loss_tracker = keras.metrics.Mean(name="loss")  # updated by kdflow.training.loop's steps
        self.accuracy_tracker = keras.metrics.SparseCategoricalAccuracy(name="accuracy")
        for term in objective.terms:
            setattr(self, f"{term}_tracker", keras.metrics.Mean(name=term))

    def _track(self, term: str, values: tf.Tensor) -> None:
        getattr(self, f"{term}_tracker").update_state(values)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        # Under a mixed precision policy the outputs are 16-bit: every loss (the softmax with
        # temperature included) is computed in float32.
        per_sample = self.objective.per_sample(self.objective.targets(x, y), as_float32(y_pred), self._track)
        # Sum over the replica's samples / the global batch size: the mean over the global batch
        # once the replicas' gradients are summed (tf.distribute's rule; a no-op on one device).
        loss = tf.nn.compute_average_loss(per_sample)
        if self.losses:  # weight regularisers of the layers
            loss += tf.nn.scale_regularization_loss(tf.add_n(self.losses))
        return loss

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        # the accuracy on the labels: images without one (NO_LABEL) are left out
        labels = y[LABELS]
        self.accuracy_tracker.update_state(tf.maximum(labels, 0), self.objective.logits(as_float32(y_pred)),
                                           sample_weight=tf.cast(labels >= 0, tf.float32))
        return self.get_metrics_result()


def as_float32(outputs):
    return tf.nest.map_structure(lambda t: tf.cast(t, tf.float32), outputs)


def training_model(network: keras.Model, objective: Objective = HARD_LABELS) -> TrainingModel:
    """``network`` as a TrainingModel sharing its layers (training it trains ``network``)."""
    return TrainingModel(network.inputs, objective.outputs(network), objective, name=network.name)
