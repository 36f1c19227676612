"""The architecture families, their registry ``FAMILIES``, the named presets, and ``build``.

A family is its knobs (given as the ``<family>:`` sub-section of ``teacher`` or ``student``, or
for a ``flat`` family as keys beside ``arch``, as the keras.applications take ``width`` and
``weights``) and its builder, which takes the image tensor and returns the logits tensor (the
softmax lives in the loss); ``build`` makes the model around it, with the model's input
convention (``input_range``) as its first layer. A preset names a family with fixed knobs
(``resnet20``). Every model takes its input shape and class count from the prepared data.
Keras is imported only when a model is built, so the params stay free of TensorFlow.

Adding a family: its knobs class, its builder, one ``FAMILIES`` line here, and its field in
kdflow.models.params.ModelParams (docs/extending.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from pydantic import Field, model_validator

from kdflow.core import KdflowError
from kdflow.core.params import Section
from kdflow.models import applications, input_range

if TYPE_CHECKING:
    from kdflow.models.params import ModelParams


@dataclass(frozen=True)
class Family:
    knobs: type[Section]
    build: Callable[[Any, Any, int], Any]  # (knobs, image tensor, classes) -> logits tensor
    flat: bool = False  # its knobs sit beside `arch` (optional, with their defaults)


@dataclass(frozen=True)
class Preset:
    family: str
    knobs: Section


# ---- spec: a plain CNN/MLP ----------------------------------------------------------------------

class ArchSpec(Section):
    """A plain CNN/MLP: conv blocks (conv -> [batch-norm] -> relu -> max-pool), flatten,
    dense layers with relu and dropout, then a Dense(num_classes) logits layer."""

    conv_filters: list[int] = Field(default_factory=list)
    kernel_size: int = Field(3, ge=1)
    pool_size: int = Field(2, ge=1)
    batch_norm: bool = False
    dense_units: list[int] = Field(default_factory=list)
    dropout: float = Field(0.0, ge=0, lt=1)

    @model_validator(mode="after")
    def _positive_widths(self) -> "ArchSpec":
        for key in ("conv_filters", "dense_units"):
            bad = [w for w in getattr(self, key) if w < 1]
            if bad:
                raise ValueError(f"{key} must be positive integers, got {bad}")
        return self


def build_from_spec(spec: ArchSpec, image, num_classes: int):
    """conv blocks -> flatten -> dense blocks -> Dense(num_classes) logits."""
    import keras

    h = image
    for i, filters in enumerate(spec.conv_filters):
        h = keras.layers.Conv2D(filters, spec.kernel_size, use_bias=not spec.batch_norm, name=f"conv{i}")(h)
        if spec.batch_norm:
            h = keras.layers.BatchNormalization(name=f"bn{i}")(h)
        h = keras.layers.ReLU(name=f"relu{i}")(h)
        if spec.pool_size > 1:
            h = keras.layers.MaxPooling2D(spec.pool_size, name=f"pool{i}")(h)
    h = keras.layers.Flatten(name="flatten")(h)
    for i, units in enumerate(spec.dense_units):
        h = keras.layers.Dense(units, activation="relu", name=f"dense{i}")(h)
        if spec.dropout > 0:
            h = keras.layers.Dropout(spec.dropout, name=f"dropout{i}")(h)
    if spec.dropout > 0 and not spec.dense_units:
        h = keras.layers.Dropout(spec.dropout, name="dropout")(h)
    return keras.layers.Dense(num_classes, name="logits")(h)


# ---- resnet: the CIFAR-style residual family -------------------------------------------------------

class ResNetSpec(Section):
    """A CIFAR-style residual CNN (He et al. 2016): a 3x3 stem, then stages of basic blocks
    (two 3x3 conv + batch-norm, identity or 1x1 projection shortcut); each stage after the first
    halves the resolution and doubles the width; global average pooling; logits.
    ``width`` multiplies every stage's filter count."""

    base_filters: int = Field(16, ge=1)
    blocks_per_stage: list[int] = Field(default_factory=lambda: [1, 1, 1])
    width: float = Field(1.0, gt=0, le=16)
    dropout: float = Field(0.0, ge=0, lt=1)

    @model_validator(mode="after")
    def _blocks(self) -> "ResNetSpec":
        if not self.blocks_per_stage or min(self.blocks_per_stage) < 1:
            raise ValueError(f"blocks_per_stage = {self.blocks_per_stage}: needs >= 1 stage of >= 1 block")
        return self


def build_resnet(spec: ResNetSpec, image, num_classes: int):
    """CIFAR-style ResNet: stem -> stages of basic blocks -> global average pool -> logits."""
    import keras

    def conv_bn(h, filters, strides, label, relu=True):
        h = keras.layers.Conv2D(filters, 3, strides=strides, padding="same", use_bias=False,
                                kernel_initializer="he_normal", name=f"{label}_conv")(h)
        h = keras.layers.BatchNormalization(name=f"{label}_bn")(h)
        return keras.layers.ReLU(name=f"{label}_relu")(h) if relu else h

    h = conv_bn(image, max(1, round(spec.base_filters * spec.width)), 1, "stem")
    for stage, blocks in enumerate(spec.blocks_per_stage):
        filters = max(1, round(spec.base_filters * spec.width * 2**stage))
        for block in range(blocks):
            label = f"stage{stage}_block{block}"
            strides = 2 if stage > 0 and block == 0 else 1
            shortcut = h
            if strides != 1 or h.shape[-1] != filters:  # projection shortcut where the shape changes
                shortcut = keras.layers.Conv2D(filters, 1, strides=strides, use_bias=False,
                                               name=f"{label}_proj")(h)
            h = conv_bn(h, filters, strides, f"{label}_a")
            h = conv_bn(h, filters, 1, f"{label}_b", relu=False)
            h = keras.layers.ReLU(name=f"{label}_out")(keras.layers.Add(name=f"{label}_add")([h, shortcut]))
    h = keras.layers.GlobalAveragePooling2D(name="pool")(h)
    if spec.dropout > 0:
        h = keras.layers.Dropout(spec.dropout, name="dropout")(h)
    return keras.layers.Dense(num_classes, name="logits")(h)


# ---- the registry --------------------------------------------------------------------------------

FAMILIES: dict[str, Family] = {
    "spec": Family(ArchSpec, build_from_spec),
    "resnet": Family(ResNetSpec, build_resnet),
    **{name: Family(applications.ApplicationKnobs, applications.builder(name), flat=True)
       for name in applications.APPLICATIONS},
}

# The two reference workflows' models (docs/params.md) and small ResNets, as fixed knobs of a family.
PRESETS: dict[str, Preset] = {
    # Keras notebook (CIFAR-10): Conv12-Pool-Conv12-Pool-Dense10 / Conv12-Pool-Dense10.
    "notebook_teacher": Preset("spec", ArchSpec(conv_filters=[12, 12])),
    "notebook_student": Preset("spec", ArchSpec(conv_filters=[12])),
    # KnowledgeDistilling repo (Fashion-MNIST): MLP 512-256-128 / MLP 128.
    "repo_teacher": Preset("spec", ArchSpec(dense_units=[512, 256, 128])),
    "repo_student": Preset("spec", ArchSpec(dense_units=[128])),
    # Modern small residual nets for CIFAR-sized inputs (ResNet-8/-20 of He et al.'s CIFAR family).
    "resnet8": Preset("resnet", ResNetSpec(blocks_per_stage=[1, 1, 1])),
    "resnet20": Preset("resnet", ResNetSpec(blocks_per_stage=[3, 3, 3])),
    "resnet20_w2": Preset("resnet", ResNetSpec(blocks_per_stage=[3, 3, 3], width=2.0)),
}


def resolve(model: ModelParams) -> tuple[Family, Section]:
    """The family and knobs of a validated ``teacher`` / ``student`` section."""
    preset = PRESETS.get(model.arch)
    if preset is not None:
        return FAMILIES[preset.family], preset.knobs
    family = FAMILIES[model.arch]
    if family.flat:
        return family, family.knobs(**{key: getattr(model, key) for key in family.knobs.model_fields})
    return family, getattr(model, model.arch)


def build(model: ModelParams, input_shape: tuple[int, ...], num_classes: int, name: str):
    """The Keras model (logits out) that ``model`` (a validated ``teacher`` / ``student``) names."""
    import keras

    family, knobs = resolve(model)
    section = "teacher" if name == "teacher" else "student"
    if family.flat and model.input_range != "unit":
        raise KdflowError(f"{section}.input_range = {model.input_range}: {model.arch} maps the [0, 1] images to "
                          "its own input convention inside the model: leave input_range unit")
    inputs = keras.Input(shape=tuple(input_shape), name="image")
    image = input_range.apply(inputs, input_range.layers(model.input_range, channels=input_shape[-1]))
    try:
        logits = family.build(knobs, image, int(num_classes))
    except KdflowError as exc:
        raise KdflowError(f"{section}.{exc}") from None
    return keras.Model(inputs, logits, name=name)
