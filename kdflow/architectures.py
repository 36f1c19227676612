"""The architecture families (an extension point, kdflow.registry) and the named presets.

A family is one entry: its name, its params section (the knobs of ``arch: <family>``, given as
the ``<family>:`` sub-section of ``teacher`` or ``student``, or for a ``flat`` family as keys
beside ``arch``, as the keras.applications take ``width`` and ``weights``) and its builder,
which takes the image tensor and returns the logits tensor (the softmax lives in the loss);
``build`` makes the model around it, with the model's input convention (``input_range``) as
its first layer. A preset names a family with fixed knobs (``resnet20``). Every model takes its
input shape and class count from the prepared data. Keras is imported only when a model is
built, so the schema stays free of TensorFlow.

Adding a family: a section class, a builder, one ``FAMILIES.add`` line (docs/extending.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Optional

from pydantic import Field, model_validator

from kdflow.errors import KdflowError
from kdflow.params import ModelParams, StrictSection, TeacherParams, compose_section
from kdflow.registry import Registry


@dataclass(frozen=True)
class Family:
    name: str
    section: type[StrictSection]
    build: Callable[[Any, Any, int], Any]  # (knobs, image tensor, classes) -> logits tensor
    flat: bool = False  # its section's keys sit beside `arch` (optional, with their defaults)


@dataclass(frozen=True)
class Preset:
    family: str
    knobs: StrictSection


# ---- spec: a plain CNN/MLP ----------------------------------------------------------------------

class ArchSpec(StrictSection):
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

class ResNetSpec(StrictSection):
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


# ---- keras.applications: the backbones people ship ----------------------------------------------------

class ApplicationKnobs(StrictSection):
    """A keras.applications backbone (``include_top=False``, global average pooling), optional
    dropout, then a new Dense(num_classes) logits layer. These keys sit beside ``arch``."""

    width: float = Field(1.0, gt=0, le=4)  # the MobileNets' alpha (width multiplier); 1 for the others
    dropout: float = Field(0.0, ge=0, lt=1)  # before the logits layer
    # The backbone's starting weights: null (random), imagenet (downloaded by Keras: needs the
    # internet), or the path of a weights file for this backbone without its top (as Keras
    # distributes them: the `..._no_top.h5` files).
    weights: Optional[str] = None


@dataclass(frozen=True)
class Application:
    """How kdflow builds one keras.applications model: the pixels it expects (mapped from the
    pipeline's [0, 1] by a Rescaling layer; its own normalisation is inside the model: its
    ``include_preprocessing`` where it has one), and whether it takes a width (alpha)."""

    pixels: str  # input_adapter's name of the range: byte = [0, 255], symmetric = [-1, 1]
    takes_width: bool = False
    include_preprocessing: bool = False


# The smallest input keras.applications build for (their min_size; MobileNetV3 needs 32 px).
APPLICATION_MIN_SIZE = 32
APPLICATIONS: dict[str, Application] = {
    "MobileNetV2": Application("symmetric", takes_width=True),  # its preprocess_input: [-1, 1]
    "MobileNetV3Small": Application("byte", takes_width=True, include_preprocessing=True),
    "MobileNetV3Large": Application("byte", takes_width=True, include_preprocessing=True),
    # EfficientNet (V1) rescales and normalises inside the model: it takes [0, 255]
    **{f"EfficientNetB{i}": Application("byte") for i in range(4)},
    **{f"EfficientNetV2B{i}": Application("byte", include_preprocessing=True) for i in range(4)},
    "ResNet50V2": Application("symmetric"),  # its preprocess_input: [-1, 1]
    "ConvNeXtTiny": Application("byte", include_preprocessing=True),
}


def application_builder(name: str) -> Callable[[ApplicationKnobs, Any, int], Any]:
    def build(knobs: ApplicationKnobs, image, num_classes: int):
        import keras

        from kdflow import input_adapter

        app = APPLICATIONS[name]
        height, width, channels = image.shape[1:]
        if min(height, width) < APPLICATION_MIN_SIZE:
            raise KdflowError(f"arch = {name}: needs images of at least {APPLICATION_MIN_SIZE}x{APPLICATION_MIN_SIZE} "
                              f"pixels, the model gets {height}x{width} (set data.image_size)")
        options: dict[str, Any] = {}
        if app.takes_width:
            options["alpha"] = knobs.width
        elif knobs.width != 1.0:
            raise KdflowError(f"width = {knobs.width:g}: {name} takes no width (only the MobileNets do)")
        if app.include_preprocessing:
            options["include_preprocessing"] = True
        weights = knobs.weights
        if weights not in (None, "imagenet") and not Path(weights).is_file():
            raise KdflowError(f"weights = {weights}: no such file (give null, imagenet, or a weights file)")
        try:
            backbone = getattr(keras.applications, name)(
                include_top=False, weights=weights, input_shape=(height, width, channels), pooling="avg", **options)
        except Exception as exc:  # Keras raises ValueError for a mismatch, Exception for a failed download
            raise KdflowError(_build_problem(exc, weights, name)) from None
        h = backbone(input_adapter.apply(image, input_adapter.layers(app.pixels)))
        if knobs.dropout > 0:
            h = keras.layers.Dropout(knobs.dropout, name="dropout")(h)
        return keras.layers.Dense(num_classes, name="logits")(h)

    return build


def _build_problem(exc: Exception, weights: str | None, name: str) -> str:
    """The one line for a keras.applications model Keras would not build (after ``arch``'s section)."""
    from kdflow.artifacts import first_line

    text = first_line(exc)
    if weights is None:
        return f"arch = {name}: Keras could not build it ({text})"
    if weights == "imagenet" and ("URL fetch failure" in text or "http" in text.lower()):
        return (f"weights = imagenet: Keras could not download {name}'s ImageNet weights (offline?): download "
                "its no-top weights file where you are online and give its path")
    if weights == "imagenet":
        return f"weights = imagenet: {text}"
    return f"weights = {weights}: not weights for this {name} ({text})"

# ---- the registry -------------------------------------------------------------------------------------

def _compose(families: Registry[Family]) -> dict[str, type]:
    """``teacher`` and ``student``: ``arch`` (a preset or a family) and one optional sub-section
    per family, given exactly when ``arch`` names that family; the keys of the flat families'
    sections beside ``arch``, given only when ``arch`` names a flat family."""
    arch = Literal[(*PRESETS, *families.names())]  # type: ignore[valid-type]
    nested = [family for family in families if not family.flat]
    flat_sections = list(dict.fromkeys(family.section for family in families if family.flat))

    def check(self):
        if not (self.arch in families and families[self.arch].flat):
            for section in flat_sections:
                for key, field in section.model_fields.items():
                    if getattr(self, key) != field.default:
                        raise ValueError(f"{key} applies to a keras.applications arch, not {self.arch}")
        for family in nested:
            given = getattr(self, family.name) is not None
            if self.arch == family.name and not given:
                raise ValueError(f"arch '{family.name}' needs a '{family.name}' section (see docs/params.md)")
            if self.arch != family.name and given:
                raise ValueError(f"arch is '{self.arch}': remove the '{family.name}' section or set arch: {family.name}")
        return self

    def sections(base: type[ModelParams]) -> type:
        fields = {"arch": (arch, base.model_fields["arch"].default),
                  **{f.name: (Optional[f.section], None) for f in nested}}
        return compose_section(base.__name__, (base, *flat_sections), fields, check)

    return {"teacher": sections(TeacherParams), "student": sections(ModelParams)}


FAMILIES: Registry[Family] = Registry("architecture family", "arch", _compose)
FAMILIES.add(Family("spec", ArchSpec, build_from_spec))
FAMILIES.add(Family("resnet", ResNetSpec, build_resnet))
for _name in APPLICATIONS:
    FAMILIES.add(Family(_name, ApplicationKnobs, application_builder(_name), flat=True))

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


def resolve(cfg) -> tuple[Family, StrictSection]:
    """The family and knobs of a validated ``teacher`` / ``student`` section."""
    preset = PRESETS.get(cfg.arch)
    if preset is not None:
        return FAMILIES[preset.family], preset.knobs
    family = FAMILIES[cfg.arch]
    if family.flat:
        return family, family.section(**{key: getattr(cfg, key) for key in family.section.model_fields})
    return family, getattr(cfg, cfg.arch)


def build(cfg, input_shape: tuple[int, ...], num_classes: int, name: str):
    """The Keras model (logits out) that ``cfg`` (a validated ``teacher`` / ``student``) names."""
    import keras

    from kdflow import input_adapter

    family, knobs = resolve(cfg)
    if family.flat and cfg.input_range != "unit":
        raise KdflowError(f"{_section(name)}.input_range = {cfg.input_range}: {cfg.arch} maps the [0, 1] images to "
                          "its own input convention inside the model: leave input_range unit")
    inputs = keras.Input(shape=tuple(input_shape), name="image")
    image = input_adapter.apply(inputs, input_adapter.layers(cfg.input_range, channels=input_shape[-1]))
    try:
        logits = family.build(knobs, image, int(num_classes))
    except KdflowError as exc:
        raise KdflowError(f"{_section(name)}.{exc}") from None
    return keras.Model(inputs, logits, name=name)


def _section(role: str) -> str:
    return "teacher" if role == "teacher" else "student"
