"""The loss terms, one function per published method, and the registry of distillation methods.

Every distillation method is a *soft term* ``(labels, teacher_logits, student_logits) ->
per-sample loss``; ``kdflow.objective`` mixes it with the labels as
``alpha * CE + (1 - alpha) * warmup(epoch) * soft_term``. Adding a method = one term function
and one line in ``METHODS``. A method may also add a feature *hint* (FitNets), computed from
the teacher's cached features and a learned projection of a student layer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import tensorflow as tf

from kdflow.params import Params

SoftTerm = Callable[[tf.Tensor, tf.Tensor, tf.Tensor], tf.Tensor]


def hard_ce(labels: tf.Tensor, logits: tf.Tensor, label_smoothing: float = 0.0) -> tf.Tensor:
    """Cross-entropy with the hard labels (class ids), per sample; with ``label_smoothing`` s,
    against (1 - s) * one_hot + s / classes."""
    if not label_smoothing:
        return tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
    classes = tf.shape(logits)[-1]
    smoothed = tf.one_hot(labels, classes) * (1.0 - label_smoothing) + label_smoothing / tf.cast(classes, tf.float32)
    return tf.nn.softmax_cross_entropy_with_logits(labels=smoothed, logits=logits)


# ---- soft terms: one function per published method --------------------------------------


def soft_kl(teacher_logits: tf.Tensor, student_logits: tf.Tensor, temperature: float) -> tf.Tensor:
    """T^2 * KL(softmax(teacher/T) || softmax(student/T)) per sample (Hinton et al. 2015).

    Computed from log-softmax of both, never from raw logits, so it is always >= 0.
    """
    t_log_p = tf.nn.log_softmax(teacher_logits / temperature, axis=-1)
    s_log_p = tf.nn.log_softmax(student_logits / temperature, axis=-1)
    kl = tf.reduce_sum(tf.exp(t_log_p) * (t_log_p - s_log_p), axis=-1)
    return (temperature**2) * kl


def kd_term(temperature: float) -> SoftTerm:
    """Hinton et al. 2015: T^2 * KL on temperature-softened distributions."""
    return lambda labels, teacher, student: soft_kl(teacher, student, temperature)


def dkd_term(temperature: float, alpha: float, beta: float) -> SoftTerm:
    """Decoupled KD (Zhao et al., CVPR 2022): alpha * TCKD + beta * NCKD, both x T^2.

    TCKD is the KL between the binary (target, not-target) distributions; NCKD the KL between
    the distributions over the non-target classes only.
    """

    def term(labels, teacher, student):
        gt = tf.one_hot(labels, tf.shape(student)[-1], dtype=student.dtype)
        p_t = tf.nn.softmax(teacher / temperature)
        p_s = tf.nn.softmax(student / temperature)
        eps = 1e-12
        b_t = tf.stack([tf.reduce_sum(p_t * gt, -1), tf.reduce_sum(p_t * (1 - gt), -1)], -1)
        b_s = tf.stack([tf.reduce_sum(p_s * gt, -1), tf.reduce_sum(p_s * (1 - gt), -1)], -1)
        tckd = tf.reduce_sum(b_t * (tf.math.log(b_t + eps) - tf.math.log(b_s + eps)), -1)
        # Mask the target class out with a large negative logit, as the published code does.
        nt_log_t = tf.nn.log_softmax(teacher / temperature - 1000.0 * gt)
        nt_log_s = tf.nn.log_softmax(student / temperature - 1000.0 * gt)
        nckd = tf.reduce_sum(tf.exp(nt_log_t) * (nt_log_t - nt_log_s) * (1 - gt), -1)
        return (alpha * tckd + beta * nckd) * temperature**2

    return term


def standardize(logits: tf.Tensor, eps: float = 1e-7) -> tf.Tensor:
    """Z-score each logit vector (Sun et al., CVPR 2024)."""
    mean = tf.reduce_mean(logits, axis=-1, keepdims=True)
    std = tf.math.reduce_std(logits, axis=-1, keepdims=True)
    return (logits - mean) / (std + eps)


def lskd_term(temperature: float) -> SoftTerm:
    """KD on z-score standardised logits, with `temperature` as the base temperature."""
    return lambda labels, teacher, student: soft_kl(standardize(teacher), standardize(student), temperature)


def _pearson_rows(a: tf.Tensor, b: tf.Tensor, eps: float = 1e-8) -> tf.Tensor:
    a = a - tf.reduce_mean(a, axis=-1, keepdims=True)
    b = b - tf.reduce_mean(b, axis=-1, keepdims=True)
    return tf.reduce_sum(a * b, -1) / (tf.norm(a, axis=-1) * tf.norm(b, axis=-1) + eps)


def dist_term(temperature: float, beta: float, gamma: float) -> SoftTerm:
    """DIST (Huang et al., 2022): beta * (1 - Pearson per sample) + gamma * (1 - Pearson per
    class over the batch), on softmax(z / tau), x tau^2. The intra-class part is a batch
    statistic, broadcast to every sample so the batch mean equals the published loss."""

    def term(labels, teacher, student):
        y_t = tf.nn.softmax(teacher / temperature)
        y_s = tf.nn.softmax(student / temperature)
        inter = 1.0 - _pearson_rows(y_s, y_t)
        intra = 1.0 - tf.reduce_mean(_pearson_rows(tf.transpose(y_s), tf.transpose(y_t)))
        return temperature**2 * (beta * inter + gamma * intra)

    return term


def mse_term() -> SoftTerm:
    """Logit regression (Ba & Caruana 2014): mean squared difference of the logits."""
    return lambda labels, teacher, student: tf.reduce_mean(tf.square(student - teacher), axis=-1)


def hint_mse(teacher_features: tf.Tensor, projected_student_features: tf.Tensor) -> tf.Tensor:
    """FitNets (Romero et al. 2015): MSE between the teacher's hint layer and the learned
    projection of the student's guided layer, per sample."""
    return tf.reduce_mean(tf.square(projected_student_features - teacher_features), axis=-1)


@dataclass(frozen=True)
class Method:
    term: SoftTerm
    warmup_epochs: int = 0  # the soft term's weight ramps linearly from 1/warmup to 1
    hint_weight: float = 0.0  # > 0: add a FitNets feature hint (teacher features needed)


METHODS: dict[str, Callable[[Params], Method]] = {
    "kd": lambda p: Method(kd_term(p.temperature)),
    "dkd": lambda p: Method(dkd_term(p.temperature, p.dkd.alpha, p.dkd.beta), p.dkd.warmup_epochs),
    "lskd": lambda p: Method(lskd_term(p.temperature)),
    "dist": lambda p: Method(dist_term(p.temperature, p.dist.beta, p.dist.gamma)),
    "mse": lambda p: Method(mse_term()),
    "fitnet": lambda p: Method(kd_term(p.temperature), hint_weight=p.fitnet.weight),
}

