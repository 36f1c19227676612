"""Training losses and metrics on *packed targets*.

One training loop (``keras.Model.fit``) serves the teacher, the scratch student and the
distilled student because every loss takes the same ``targets`` tensor: column 0 holds the
class id, and for distillation columns 1.. hold the cached teacher logits. Keras' own fit
loop, callbacks and compiled step are then used unchanged, and the teacher never runs.

Distillation methods live in ``METHODS``: a method is a factory returning a loss function
(plus the extra metrics worth logging); adding one is a function and one registry line.
"""

from __future__ import annotations

from typing import Callable

import tensorflow as tf

LossFn = Callable[[tf.Tensor, tf.Tensor], tf.Tensor]


def pack_targets(labels, teacher_logits=None):
    """Build the packed targets array (NumPy) that every loss here reads."""
    import numpy as np

    column = np.asarray(labels, dtype=np.float32).reshape(-1, 1)
    if teacher_logits is None:
        return column
    return np.concatenate([column, np.asarray(teacher_logits, dtype=np.float32)], axis=1)


def _labels(targets: tf.Tensor) -> tf.Tensor:
    return tf.cast(targets[:, 0], tf.int32)


def hard_ce(targets: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
    """Cross-entropy with the hard labels (per sample)."""
    return tf.nn.sparse_softmax_cross_entropy_with_logits(labels=_labels(targets), logits=logits)


def accuracy(targets: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
    predicted = tf.argmax(logits, axis=-1, output_type=tf.int32)
    return tf.cast(tf.equal(predicted, _labels(targets)), tf.float32)


def soft_kl(teacher_logits: tf.Tensor, student_logits: tf.Tensor, temperature: float) -> tf.Tensor:
    """T^2 * KL(softmax(teacher/T) || softmax(student/T)) per sample (Hinton et al. 2015).

    Computed from log-softmax of both, never from raw logits, so it is always >= 0.
    """
    t_log_p = tf.nn.log_softmax(teacher_logits / temperature, axis=-1)
    s_log_p = tf.nn.log_softmax(student_logits / temperature, axis=-1)
    kl = tf.reduce_sum(tf.exp(t_log_p) * (t_log_p - s_log_p), axis=-1)
    return (temperature**2) * kl


def kd(alpha: float, temperature: float) -> tuple[LossFn, list[LossFn]]:
    """alpha * CE(labels) + (1 - alpha) * T^2 * KL(teacher_T || student_T)."""

    def soft_loss(targets: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
        return soft_kl(targets[:, 1:], logits, temperature)

    def kd_loss(targets: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
        return alpha * hard_ce(targets, logits) + (1.0 - alpha) * soft_loss(targets, logits)

    return kd_loss, [soft_loss]


METHODS: dict[str, Callable[..., tuple[LossFn, list[LossFn]]]] = {
    "kd": kd,
}
