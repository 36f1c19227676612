"""The distillation methods: the interface, one builder per published method, the registry
``METHODS``, and the `distill` section of params.yaml (``DistillParams``).

A method is built from its knobs (its sub-section ``distill.<name>``) and the temperature into a
``Method``: a function from what the student and the teacher gave on a batch (``Seen``) to named
per-sample loss terms, each logged with its own ``Mean``. ``soft_loss`` is the logit term; the
distilled objective (kdflow.distill.objective) mixes it with the labels,

    loss = alpha * CE + (1 - alpha) * warm-up(epoch) * soft_loss + every other term,

so a method weighs its other terms itself. A feature method declares the layers it compares
(``Feature``): the teacher's side is computed once over the same views as the cached logits
(kdflow.views.cache.teacher_features), the student's is an output of its training model.

Adding a method: its builder, its knobs class and ``DistillParams`` field if it has knobs, one
``METHODS`` line (docs/extending.md). TensorFlow is imported only when a method runs, so the
params stay free of it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Mapping

from pydantic import Field

from kdflow.core import KdflowError
from kdflow.core.params import Section


@dataclass(frozen=True)
class Seen:
    """What a method compares on one batch: float32 tensors, one row per sample."""

    labels: Any
    teacher_logits: Any
    student_logits: Any
    teacher: Mapping[str, Any] = field(default_factory=dict)  # each Feature's teacher side, by name
    student: Mapping[str, Any] = field(default_factory=dict)  # and its student side


@dataclass(frozen=True)
class Feature:
    """A teacher layer and a student layer a feature method compares. The teacher's side is
    ``teacher(output of teacher_layer)`` per sample; the student's, ``student(output of
    student_layer, the teacher side's per-sample shape)``: Keras layers or ops on symbolic tensors
    (a projection in it trains with the student and is dropped from the student that ships)."""

    name: str
    param: str  # the knobs' section, named in errors: "distill.fitnet" -> distill.fitnet.teacher_layer
    teacher_layer: str
    student_layer: str
    teacher: Callable[[Any], Any]
    student: Callable[[Any, tuple], Any]


@dataclass(frozen=True)
class Method:
    """A method as the distilled objective uses it."""

    terms: Callable[[Seen], dict[str, Any]]  # the named per-sample terms, `soft_loss` among them
    names: tuple[str, ...] = ("soft_loss",)  # the terms it returns, `soft_loss` first
    features: tuple[Feature, ...] = ()
    warmup_epochs: int = 0  # the soft term's weight ramps linearly from 1/warmup to 1


# ---- logit methods: a soft term each -----------------------------------------------------------

def soft_kl(teacher_logits, student_logits, temperature: float):
    """T^2 * KL(softmax(teacher/T) || softmax(student/T)) per sample (Hinton et al. 2015).
    Computed from log-softmax of both, never from raw logits, so it is always >= 0."""
    import tensorflow as tf

    t_log_p = tf.nn.log_softmax(teacher_logits / temperature, axis=-1)
    s_log_p = tf.nn.log_softmax(student_logits / temperature, axis=-1)
    kl = tf.reduce_sum(tf.exp(t_log_p) * (t_log_p - s_log_p), axis=-1)
    return (temperature**2) * kl


def kd(knobs: None, temperature: float) -> Method:
    """Hinton et al. 2015: T^2 * KL on temperature-softened distributions."""
    return Method(lambda seen: {"soft_loss": soft_kl(seen.teacher_logits, seen.student_logits, temperature)})


class DkdKnobs(Section):
    """Decoupled KD (Zhao et al. 2022): weights of the target / non-target class terms."""

    alpha: float = Field(1.0, ge=0)
    beta: float = Field(8.0, ge=0)
    # The soft term's weight ramps up linearly over the first epochs (0 = no warm-up).
    warmup_epochs: int = Field(5, ge=0)


def dkd(knobs: DkdKnobs, temperature: float) -> Method:
    """Decoupled KD (Zhao et al., CVPR 2022): alpha * TCKD + beta * NCKD, both x T^2. TCKD is the
    KL between the binary (target, not-target) distributions; NCKD the KL between the
    distributions over the non-target classes only."""
    def terms(seen: Seen) -> dict:
        import tensorflow as tf

        teacher, student = seen.teacher_logits, seen.student_logits
        gt = tf.one_hot(seen.labels, tf.shape(student)[-1], dtype=student.dtype)
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
        return {"soft_loss": (knobs.alpha * tckd + knobs.beta * nckd) * temperature**2}

    return Method(terms, warmup_epochs=knobs.warmup_epochs)


def standardize(logits, eps: float = 1e-7):
    """Z-score each logit vector (Sun et al., CVPR 2024)."""
    import tensorflow as tf

    mean = tf.reduce_mean(logits, axis=-1, keepdims=True)
    std = tf.math.reduce_std(logits, axis=-1, keepdims=True)
    return (logits - mean) / (std + eps)


def lskd(knobs: None, temperature: float) -> Method:
    """KD on z-score standardised logits, with `temperature` as the base temperature."""
    return Method(lambda seen: {"soft_loss": soft_kl(standardize(seen.teacher_logits),
                                                     standardize(seen.student_logits), temperature)})


def _pearson_rows(a, b, eps: float = 1e-8):
    import tensorflow as tf

    a = a - tf.reduce_mean(a, axis=-1, keepdims=True)
    b = b - tf.reduce_mean(b, axis=-1, keepdims=True)
    return tf.reduce_sum(a * b, -1) / (tf.norm(a, axis=-1) * tf.norm(b, axis=-1) + eps)


class DistKnobs(Section):
    """DIST (Huang et al. 2022): weights of the inter-class and intra-class relation terms."""

    beta: float = Field(1.0, ge=0)
    gamma: float = Field(1.0, ge=0)


def dist(knobs: DistKnobs, temperature: float) -> Method:
    """DIST (Huang et al., 2022): beta * (1 - Pearson per sample) + gamma * (1 - Pearson per
    class over the batch), on softmax(z / tau), x tau^2. The intra-class part is a batch
    statistic, broadcast to every sample so the batch mean equals the published loss."""
    def terms(seen: Seen) -> dict:
        import tensorflow as tf

        y_t = tf.nn.softmax(seen.teacher_logits / temperature)
        y_s = tf.nn.softmax(seen.student_logits / temperature)
        inter = 1.0 - _pearson_rows(y_s, y_t)
        intra = 1.0 - tf.reduce_mean(_pearson_rows(tf.transpose(y_s), tf.transpose(y_t)))
        return {"soft_loss": temperature**2 * (knobs.beta * inter + knobs.gamma * intra)}

    return Method(terms)


def mse(knobs: None, temperature: float) -> Method:
    """Logit regression (Ba & Caruana 2014): mean squared difference of the logits."""
    def terms(seen: Seen) -> dict:
        import tensorflow as tf

        return {"soft_loss": tf.reduce_mean(tf.square(seen.student_logits - seen.teacher_logits), axis=-1)}

    return Method(terms)


# ---- feature methods: the KD term plus a term on a teacher layer's features ------------------------

def _mean_square(a, b):
    """The mean squared difference of two per-sample feature tensors, per sample."""
    import keras

    return keras.ops.mean(keras.ops.square(a - b), axis=tuple(range(1, len(a.shape))))


def _flat(tensor):
    import keras

    return keras.layers.Flatten()(tensor) if len(tensor.shape) > 2 else tensor


class FitnetKnobs(Section):
    """FitNets hint (Romero et al. 2015): the student layer's output goes through a learned linear
    projection and is regressed (MSE) onto the teacher layer's output; added to the KD loss."""

    teacher_layer: str = "pool"  # the default ResNet teacher's global average pool
    student_layer: str = "flatten"
    weight: float = Field(1.0, ge=0)


def fitnet(knobs: FitnetKnobs, temperature: float) -> Method:
    def student(output, teacher_shape: tuple):
        import keras

        hint = keras.layers.Flatten(name="hint_flatten")(output) if len(output.shape) > 2 else output
        return keras.layers.Dense(teacher_shape[-1], name="hint_projection")(hint)

    def terms(seen: Seen) -> dict:
        return {"soft_loss": soft_kl(seen.teacher_logits, seen.student_logits, temperature),
                "hint_loss": knobs.weight * _mean_square(seen.student["hint"], seen.teacher["hint"])}

    hint = Feature("hint", "distill.fitnet", knobs.teacher_layer, knobs.student_layer, _flat, student)
    return Method(terms, ("soft_loss", "hint_loss"), (hint,))


class AtKnobs(Section):
    """Attention transfer (Zagoruyko & Komodakis 2017): the student layer's spatial attention map
    is regressed onto the teacher layer's; added to the KD loss."""

    teacher_layer: str = "stage1_block2_out"  # the default ResNet-20 teacher's second stage (14x14 on digits)
    student_layer: str = "pool0"  # the default student's pooled convolution (13x13)
    weight: float = Field(1000.0, ge=0)  # beta, as the paper's and RepDistiller's CIFAR runs


def attention_map(features, size: tuple[int, int] | None = None):
    """The spatial attention map of a [b, H, W, C] feature map: the mean over channels of the
    squared activations, resized to ``size`` (as RepDistiller pools the larger map to the smaller
    one's size), each map scaled to unit L2 norm: [b, H, W]."""
    import keras

    if len(features.shape) != 4:
        raise KdflowError(f"gives shape {tuple(features.shape)}: attention transfer compares spatial maps "
                          "(batch, height, width, channels)")
    energy = keras.ops.mean(keras.ops.square(features), axis=-1, keepdims=True)
    if size is not None and tuple(energy.shape[1:3]) != tuple(size):
        # antialiased bilinear: area-weighted when it shrinks, and differentiable (TF has no
        # gradient for its area resize)
        energy = keras.ops.image.resize(energy, tuple(size), interpolation="bilinear", antialias=True)
    energy = energy[..., 0]
    norm = keras.ops.sqrt(keras.ops.sum(keras.ops.square(energy), axis=(1, 2), keepdims=True))
    return energy / keras.ops.maximum(norm, 1e-12)


def at(knobs: AtKnobs, temperature: float) -> Method:
    """Attention transfer: T^2 * KL plus weight * the mean squared difference of the normalised
    attention maps, the student's brought to the teacher's resolution."""
    def terms(seen: Seen) -> dict:
        return {"soft_loss": soft_kl(seen.teacher_logits, seen.student_logits, temperature),
                "attention_loss": knobs.weight * _mean_square(seen.student["attention"], seen.teacher["attention"])}

    maps = Feature("attention", "distill.at", knobs.teacher_layer, knobs.student_layer, attention_map,
                   lambda output, teacher_shape: attention_map(output, teacher_shape[:2]))
    return Method(terms, ("soft_loss", "attention_loss"), (maps,))


# ---- the registry and the `distill` section --------------------------------------------------------

METHODS: dict[str, Callable[[Any, float], Method]] = {
    "kd": kd, "dkd": dkd, "lskd": lskd, "dist": dist, "mse": mse, "fitnet": fitnet, "at": at,
}


class DistillParams(Section):
    """The `distill` section: the method, and each method's knobs as its sub-section."""

    method: Literal[tuple(METHODS)] = "kd"  # type: ignore[valid-type]
    dkd: DkdKnobs = DkdKnobs()
    dist: DistKnobs = DistKnobs()
    fitnet: FitnetKnobs = FitnetKnobs()
    at: AtKnobs = AtKnobs()


def build(distill: DistillParams, temperature: float) -> Method:
    """The chosen method, built for ``temperature``."""
    return METHODS[distill.method](getattr(distill, distill.method, None), temperature)
