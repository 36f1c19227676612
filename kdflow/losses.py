"""The distillation methods (an extension point, kdflow.registry): one entry per published method,
with its knobs and its soft term.

Every method's *soft term* is ``(labels, teacher_logits, student_logits) -> per-sample loss``;
``kdflow.distillation`` mixes it with the labels as
``alpha * CE + (1 - alpha) * warmup(epoch) * soft_term``. A method may also add a feature *hint*
(FitNets): then distill computes the teacher's features at its hint layer too. A method's knobs
are the sub-section of ``distill`` named after it (``distill.dkd.beta``).

Adding a method: its term function, its knobs' section class if it has knobs, one
``METHODS.add`` line (docs/extending.md). TensorFlow is imported only when a term is built, so
the schema stays free of it. Only the `distill` stage (and `evaluate`, which describes the
method) imports this module: editing a loss reruns nothing upstream of `distill`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Literal

from pydantic import Field

from kdflow.params import DistillParams, StrictSection, compose_section
from kdflow.registry import Registry

SoftTerm = Callable[[Any, Any, Any], Any]  # (labels, teacher logits, student logits) -> per-sample loss


@dataclass(frozen=True)
class Method:
    """A method as the training objective uses it."""

    term: SoftTerm
    warmup_epochs: int = 0    # the soft term's weight ramps linearly from 1/warmup to 1
    # A FitNets feature hint, when hint_weight > 0: the student layer it guides and the teacher
    # layer whose features it regresses onto (distill runs the teacher to that layer).
    hint_weight: float = 0.0
    teacher_layer: str | None = None
    student_layer: str | None = None

    @property
    def hinted(self) -> bool:
        return self.hint_weight > 0


@dataclass(frozen=True)
class KdMethod:
    name: str
    build: Callable[[Any, float], Method]  # (its knobs or None, temperature) -> Method
    section: type[StrictSection] | None = None  # its knobs: distill.<name>


# ---- soft terms: one function per published method --------------------------------------


def soft_kl(teacher_logits, student_logits, temperature: float):
    """T^2 * KL(softmax(teacher/T) || softmax(student/T)) per sample (Hinton et al. 2015).

    Computed from log-softmax of both, never from raw logits, so it is always >= 0.
    """
    import tensorflow as tf

    t_log_p = tf.nn.log_softmax(teacher_logits / temperature, axis=-1)
    s_log_p = tf.nn.log_softmax(student_logits / temperature, axis=-1)
    kl = tf.reduce_sum(tf.exp(t_log_p) * (t_log_p - s_log_p), axis=-1)
    return (temperature**2) * kl


def kd_term(temperature: float) -> SoftTerm:
    """Hinton et al. 2015: T^2 * KL on temperature-softened distributions."""
    return lambda labels, teacher, student: soft_kl(teacher, student, temperature)


class DkdKnobs(StrictSection):
    """Decoupled KD (Zhao et al. 2022): weights of the target / non-target class terms."""

    alpha: float = Field(1.0, ge=0)
    beta: float = Field(8.0, ge=0)
    # The soft term's weight ramps up linearly over the first epochs (0 = no warm-up).
    warmup_epochs: int = Field(5, ge=0)


def dkd_term(temperature: float, alpha: float, beta: float) -> SoftTerm:
    """Decoupled KD (Zhao et al., CVPR 2022): alpha * TCKD + beta * NCKD, both x T^2.

    TCKD is the KL between the binary (target, not-target) distributions; NCKD the KL between
    the distributions over the non-target classes only.
    """
    import tensorflow as tf

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


def standardize(logits, eps: float = 1e-7):
    """Z-score each logit vector (Sun et al., CVPR 2024)."""
    import tensorflow as tf

    mean = tf.reduce_mean(logits, axis=-1, keepdims=True)
    std = tf.math.reduce_std(logits, axis=-1, keepdims=True)
    return (logits - mean) / (std + eps)


def lskd_term(temperature: float) -> SoftTerm:
    """KD on z-score standardised logits, with `temperature` as the base temperature."""
    return lambda labels, teacher, student: soft_kl(standardize(teacher), standardize(student), temperature)


def _pearson_rows(a, b, eps: float = 1e-8):
    import tensorflow as tf

    a = a - tf.reduce_mean(a, axis=-1, keepdims=True)
    b = b - tf.reduce_mean(b, axis=-1, keepdims=True)
    return tf.reduce_sum(a * b, -1) / (tf.norm(a, axis=-1) * tf.norm(b, axis=-1) + eps)


class DistKnobs(StrictSection):
    """DIST (Huang et al. 2022): weights of the inter-class and intra-class relation terms."""

    beta: float = Field(1.0, ge=0)
    gamma: float = Field(1.0, ge=0)


def dist_term(temperature: float, beta: float, gamma: float) -> SoftTerm:
    """DIST (Huang et al., 2022): beta * (1 - Pearson per sample) + gamma * (1 - Pearson per
    class over the batch), on softmax(z / tau), x tau^2. The intra-class part is a batch
    statistic, broadcast to every sample so the batch mean equals the published loss."""
    import tensorflow as tf

    def term(labels, teacher, student):
        y_t = tf.nn.softmax(teacher / temperature)
        y_s = tf.nn.softmax(student / temperature)
        inter = 1.0 - _pearson_rows(y_s, y_t)
        intra = 1.0 - tf.reduce_mean(_pearson_rows(tf.transpose(y_s), tf.transpose(y_t)))
        return temperature**2 * (beta * inter + gamma * intra)

    return term


def mse_term() -> SoftTerm:
    """Logit regression (Ba & Caruana 2014): mean squared difference of the logits."""
    import tensorflow as tf

    return lambda labels, teacher, student: tf.reduce_mean(tf.square(student - teacher), axis=-1)


class FitnetKnobs(StrictSection):
    """FitNets hint (Romero et al. 2015), used when distill.method = fitnet: the student layer's
    output goes through a learned linear projection and is regressed (MSE) onto the teacher
    layer's output; the term is added to the KD loss."""

    teacher_layer: str = "pool"  # the default ResNet teacher's global average pool
    student_layer: str = "flatten"
    weight: float = Field(1.0, ge=0)


def hint_mse(teacher_features, projected_student_features):
    """FitNets (Romero et al. 2015): MSE between the teacher's hint layer and the learned
    projection of the student's guided layer, per sample."""
    import tensorflow as tf

    return tf.reduce_mean(tf.square(projected_student_features - teacher_features), axis=-1)


# ---- the registry -------------------------------------------------------------------------------------

def _compose(methods: Registry[KdMethod]) -> dict[str, type]:
    method = Literal[methods.names()]  # type: ignore[valid-type]
    fields = {"method": (method, DistillParams.model_fields["method"].default),
              **{m.name: (m.section, m.section()) for m in methods if m.section is not None}}
    return {"distill": compose_section("DistillParams", (DistillParams,), fields)}


METHODS: Registry[KdMethod] = Registry("distillation method", "distill.method", _compose, distilled_only=True)
METHODS.add(KdMethod("kd", lambda knobs, t: Method(kd_term(t))))
METHODS.add(KdMethod("dkd", lambda knobs, t: Method(dkd_term(t, knobs.alpha, knobs.beta), knobs.warmup_epochs),
                     DkdKnobs))
METHODS.add(KdMethod("lskd", lambda knobs, t: Method(lskd_term(t))))
METHODS.add(KdMethod("dist", lambda knobs, t: Method(dist_term(t, knobs.beta, knobs.gamma)), DistKnobs))
METHODS.add(KdMethod("mse", lambda knobs, t: Method(mse_term())))
METHODS.add(KdMethod("fitnet", lambda knobs, t: Method(kd_term(t), hint_weight=knobs.weight,
                                                       teacher_layer=knobs.teacher_layer,
                                                       student_layer=knobs.student_layer), FitnetKnobs))


def chosen(cfg) -> KdMethod:
    """The entry ``distill.method`` names (``cfg``: the validated ``distill`` section)."""
    return METHODS[cfg.method]


def knobs(cfg):
    """The chosen method's knobs (its sub-section of ``distill``), or None."""
    entry = chosen(cfg)
    return getattr(cfg, entry.name) if entry.section is not None else None


def method(cfg, temperature: float) -> Method:
    """The chosen method, built for ``temperature``."""
    return chosen(cfg).build(knobs(cfg), temperature)
