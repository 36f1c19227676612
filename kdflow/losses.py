"""Training losses and metrics on *packed targets*, and the registry of distillation methods.

One training loop (``keras.Model.fit``) serves the teacher, the scratch student and the
distilled student because every loss takes the same ``targets`` tensor: column 0 holds the
class id, and for distillation columns 1.. hold the cached teacher logits. Keras' own fit
loop, callbacks and compiled step are then used unchanged, and the teacher never runs.

Every distillation method is a *soft term* ``(labels, teacher_logits, student_logits) ->
per-sample loss``; the pipeline mixes it with the labels as
``alpha * CE + (1 - alpha) * warmup(epoch) * soft_term``. Adding a method = one term function
and one line in ``METHODS``.

A method may also add a feature *hint* (FitNets): then the targets carry the teacher's cached
features after its logits, and the student's training model outputs a learned projection of
its hint layer after its logits (see ``kdflow.recipes``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import keras
import numpy as np
import tensorflow as tf

from kdflow.params import Params

LossFn = Callable[[tf.Tensor, tf.Tensor], tf.Tensor]
SoftTerm = Callable[[tf.Tensor, tf.Tensor, tf.Tensor], tf.Tensor]


def pack_targets(labels, teacher_logits=None, teacher_features=None) -> np.ndarray:
    """Build the packed targets array (NumPy) that every loss here reads:
    [class id | teacher logits (distillation) | teacher hint features (FitNets)]."""
    parts = [np.asarray(labels, dtype=np.float32).reshape(-1, 1)]
    for extra in (teacher_logits, teacher_features):
        if extra is not None:
            parts.append(np.asarray(extra, dtype=np.float32).reshape(len(parts[0]), -1))
    return np.concatenate(parts, axis=1)


def _labels(targets: tf.Tensor) -> tf.Tensor:
    return tf.cast(targets[:, 0], tf.int32)


def hard_ce(targets: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
    """Cross-entropy with the hard labels (per sample)."""
    return tf.nn.sparse_softmax_cross_entropy_with_logits(labels=_labels(targets), logits=logits)


def accuracy(targets: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
    predicted = tf.argmax(logits, axis=-1, output_type=tf.int32)
    return tf.cast(tf.equal(predicted, _labels(targets)), tf.float32)


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



class _Warmup(keras.callbacks.Callback):
    def __init__(self, weight: tf.Variable, epochs: int):
        super().__init__()
        self.weight, self.epochs = weight, epochs

    def on_epoch_begin(self, epoch, logs=None):
        self.weight.assign(min((epoch + 1) / self.epochs, 1.0))


class _SoftTermFromLoss(keras.callbacks.Callback):
    """Logs ``soft_loss`` (and ``val_soft_loss``), the soft term's mean, from the means Keras
    already tracks: loss = alpha * hard_ce + (1 - alpha) * weight * soft (+ hint_weight * hint),
    each a mean over the same samples. A metric that computed the term a second time cost ~1-3%
    of every distill step (probe, session 8), a large part of the 5% the distill stage may cost
    over plain training. Runs before the loggers, which read the logs it completes."""

    def __init__(self, alpha: float, weight: tf.Variable, hint_weight: float):
        super().__init__()
        self.alpha, self.weight, self.hint_weight = alpha, weight, hint_weight

    def on_epoch_end(self, epoch, logs=None):
        soft_weight = (1.0 - self.alpha) * float(self.weight.numpy())
        for prefix in ("", "val_"):
            if logs is not None and f"{prefix}loss" in logs:
                rest = logs[f"{prefix}loss"] - self.alpha * logs[f"{prefix}hard_ce"]
                rest -= self.hint_weight * logs.get(f"{prefix}hint_loss", 0.0)
                logs[f"{prefix}soft_loss"] = rest / soft_weight


def _logits(outputs: tf.Tensor, k: int) -> tf.Tensor:
    """The logits part of ``[logits | projected hint]`` outputs. Without a hint the outputs
    are the logits: no slice, whose gradient (a StridedSliceGrad per use) every step would pay."""
    return outputs if outputs.shape[-1] == k else outputs[:, :k]


def _on_logits(metric: LossFn, k: int) -> LossFn:
    """The metric applied to the logits part of ``[logits | projected hint]`` outputs."""

    def on_logits(targets, outputs):
        return metric(targets, _logits(outputs, k))

    on_logits.__name__ = metric.__name__  # keeps the logged names: accuracy, hard_ce
    return on_logits


def distillation_loss(
    params: Params, num_classes: int
) -> tuple[LossFn, list[LossFn], list[keras.callbacks.Callback]]:
    """The distill stage's loss, its logged metrics and its callbacks.

    Outputs are ``[logits | projected hint]`` and targets ``[label | teacher logits | teacher
    features]``; without a hint both end after the logits.
    """
    method = METHODS[params.distill.method](params)
    alpha, k = params.alpha, num_classes
    weight = tf.Variable(1.0, trainable=False, dtype=tf.float32, name="soft_term_weight")
    callbacks = [_Warmup(weight, method.warmup_epochs)] if method.warmup_epochs else []

    def soft_loss(targets: tf.Tensor, outputs: tf.Tensor) -> tf.Tensor:
        return method.term(_labels(targets), targets[:, 1 : 1 + k], _logits(outputs, k))

    def hint_loss(targets: tf.Tensor, outputs: tf.Tensor) -> tf.Tensor:
        return hint_mse(targets[:, 1 + k :], outputs[:, k:])

    def kd_loss(targets: tf.Tensor, outputs: tf.Tensor) -> tf.Tensor:
        loss = alpha * hard_ce(targets, _logits(outputs, k)) + (1.0 - alpha) * weight * soft_loss(targets, outputs)
        if method.hint_weight:
            loss += method.hint_weight * hint_loss(targets, outputs)
        return loss

    metrics = [_on_logits(accuracy, k), _on_logits(hard_ce, k)]
    if alpha < 1.0:  # the soft term is in the loss: its mean follows from the tracked ones
        callbacks.append(_SoftTermFromLoss(alpha, weight, method.hint_weight))
    else:
        metrics.append(soft_loss)
    metrics += [hint_loss] if params.distill.needs_teacher_features else []
    return kd_loss, metrics, callbacks
