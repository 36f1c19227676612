"""What a model trains against, written as keras.io's distillation example and Keras'
``Distiller`` write it: a model whose ``compute_loss`` receives the labels and the teacher's
cached outputs as separate tensors and tracks each term with a ``keras.metrics.Mean``.

The targets of every batch are a dict: ``labels`` (class ids) always; ``teacher_logits`` for
distillation; ``teacher_features`` for a FitNets hint. The teacher, the scratch students and the
distilled students all train as a ``TrainingModel`` in the one loop of ``kdflow.training``; only
their ``Objective`` differs.
"""

from __future__ import annotations

from dataclasses import dataclass

import keras
import tensorflow as tf

from kdflow.losses import METHODS, Method, hard_ce, hint_mse
from kdflow.params import Params

LABELS, TEACHER_LOGITS, TEACHER_FEATURES = "labels", "teacher_logits", "teacher_features"


@dataclass(frozen=True)
class Objective:
    """loss = alpha * CE(labels) + (1 - alpha) * soft_weight * soft_term + hint_weight * hint,
    plus any regularisation losses of the model's layers. Without a method: CE only."""

    alpha: float = 1.0
    method: Method | None = None
    # The soft term's weight, ramped up by `Warmup` for methods that publish a warm-up.
    soft_weight: tf.Variable | None = None
    label_smoothing: float = 0.0  # of the hard-label term (the teacher's train_teacher.label_smoothing)

    @property
    def distills(self) -> bool:
        return self.method is not None

    @property
    def hint_weight(self) -> float:
        return self.method.hint_weight if self.method else 0.0

    def callbacks(self) -> list[keras.callbacks.Callback]:
        return [Warmup(self.soft_weight, self.method.warmup_epochs)] if self.soft_weight is not None else []


HARD_LABELS = Objective()


def distillation(params: Params) -> Objective:
    """The distill stage's objective. Create it under the strategy's scope (it may hold a variable)."""
    method = METHODS[params.distill.method](params)
    weight = None
    if method.warmup_epochs:
        weight = tf.Variable(1.0, trainable=False, dtype=tf.float32, name="soft_term_weight")
    return Objective(params.alpha, method, soft_weight=weight)


class Warmup(keras.callbacks.Callback):
    """Ramp the soft term's weight linearly from 1/epochs to 1 over the first ``epochs`` epochs."""

    def __init__(self, weight: tf.Variable, epochs: int):
        super().__init__()
        self.weight, self.epochs = weight, epochs

    def on_epoch_begin(self, epoch, logs=None):
        self.weight.assign(min((epoch + 1) / self.epochs, 1.0))


class TrainingModel(keras.Model):
    """A functional model trained on dict targets under an ``Objective``. Its outputs are the
    logits, or ``[logits, projected hint]`` with a FitNets hint. Each term is computed once per
    step; its per-sample values feed both the loss and the term's ``Mean``, so the logged
    ``hard_ce``, ``soft_loss`` and ``hint_loss`` are exactly the terms in the loss."""

    def __init__(self, inputs, outputs, objective: Objective = HARD_LABELS, name: str | None = None):
        super().__init__(inputs=inputs, outputs=outputs, name=name)
        self.objective = objective
        self.loss_tracker = keras.metrics.Mean(name="loss")  # updated by kdflow.training's steps
        self.accuracy_tracker = keras.metrics.SparseCategoricalAccuracy(name="accuracy")
        self.hard_ce_tracker = keras.metrics.Mean(name="hard_ce")
        if objective.distills:
            self.soft_tracker = keras.metrics.Mean(name="soft_loss")
        if objective.hint_weight:
            self.hint_tracker = keras.metrics.Mean(name="hint_loss")

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        objective = self.objective
        logits, hint = y_pred if objective.hint_weight else (y_pred, None)
        labels = y[LABELS]
        hard = hard_ce(labels, logits, objective.label_smoothing)
        self.hard_ce_tracker.update_state(hard)
        per_sample = hard
        if objective.distills:
            soft = objective.method.term(labels, y[TEACHER_LOGITS], logits)
            self.soft_tracker.update_state(soft)
            if objective.alpha < 1.0:
                weighted = soft if objective.soft_weight is None else objective.soft_weight * soft
                per_sample = objective.alpha * hard + (1.0 - objective.alpha) * weighted
            if hint is not None:
                hint_loss = hint_mse(y[TEACHER_FEATURES], hint)
                self.hint_tracker.update_state(hint_loss)
                per_sample += objective.hint_weight * hint_loss
        # Sum over the replica's samples / the global batch size: the mean over the global batch
        # once the replicas' gradients are summed (tf.distribute's rule; a no-op on one device).
        loss = tf.nn.compute_average_loss(per_sample)
        if self.losses:  # weight regularisers of the layers
            loss += tf.nn.scale_regularization_loss(tf.add_n(self.losses))
        return loss

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        logits = y_pred[0] if self.objective.hint_weight else y_pred
        self.accuracy_tracker.update_state(y[LABELS], logits)
        return self.get_metrics_result()


def training_model(network: keras.Model, objective: Objective = HARD_LABELS,
                   hint: keras.KerasTensor | None = None, hint_width: int = 0) -> TrainingModel:
    """``network`` as a TrainingModel sharing its layers (training it trains ``network``). With
    ``hint`` (the output of one of its layers), a learned linear projection of it to
    ``hint_width`` is a second output; the projection exists only while training."""
    outputs = network.outputs[0]
    if hint is not None:
        if len(hint.shape) > 2:
            hint = keras.layers.Flatten(name="hint_flatten")(hint)
        outputs = [outputs, keras.layers.Dense(hint_width, name="hint_projection")(hint)]
    return TrainingModel(network.inputs, outputs, objective, name=network.name)
