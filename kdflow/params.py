"""The core params schema, the one place for the core defaults, and loading params.yaml.

params.yaml has core sections (the schedules, the export, the runtime, the teacher's file) and
sections owned by the four extension points (kdflow.registry): ``data`` by the dataset sources,
``teacher`` and ``student`` by the architecture families, ``views`` by the view kinds and
``distill`` by the distillation methods. An extension point's module composes its entries'
sections; a stage passes the extension points it uses to ``load_params``, which validates the
core and those sections, strictly. The keys of extension points a stage does not use are kept
as given, unvalidated: the stage never reads them, so it does not import (or depend on) the
code that owns them, and the stage that does read them validates them. ``kdflow check``
validates everything at once (kdflow.extensions).

No TensorFlow here: a typo in params.yaml is reported in well under a second. The committed
params.yaml spells out these defaults (tests/test_consistency.py checks it).
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator, model_validator

from kdflow.errors import KdflowError
from kdflow.param_usage import LOG_ENV, recording
from kdflow.paths import PARAMS_FILE

# The default of every `path` param: a tracked, nearly empty folder. dvc.yaml declares
# ${data.path} and ${teacher.path} as dependencies, and a dependency must exist even when unused.
INPUTS_DIR = "inputs"


class StrictSection(BaseModel):
    """A params section: strict types (no silent "0.5" -> 0.5 or true -> 1), unknown keys are
    errors (a misspelt key is never ignored), immutable once validated."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


class ExtensionSection(StrictSection):
    """A section whose keys beyond its core fields belong to an extension point. Loaded without
    that extension point, those keys are kept as given and cannot be read (reading one is a bug:
    the stage must pass the extension point to ``load_params``); loaded with it, the section is
    the extension point's composed model, where every key is validated."""

    model_config = ConfigDict(extra="allow")

    def __getattr__(self, name: str) -> Any:
        if not name.startswith("_") and name in _extras(self):
            raise AttributeError(f"{type(self).__name__}.{name} belongs to an extension point this stage did not "
                                 "load: pass its registry to load_params to validate and read it")
        return super().__getattr__(name)


def _extras(section: BaseModel) -> dict:
    try:
        return object.__getattribute__(section, "__pydantic_extra__") or {}
    except AttributeError:
        return {}


class DataParams(ExtensionSection):
    """The dataset: ``name`` is a dataset source (kdflow.sources), which may add its own keys."""

    name: str = "mnist5k"
    path: str = INPUTS_DIR  # read by the sources that load a file or folder
    val_fraction: float = Field(0.1, gt=0, lt=0.5)
    test_fraction: float = Field(0.2, gt=0, lt=0.5)

    @model_validator(mode="after")
    def _leaves_training_data(self) -> "DataParams":
        if self.val_fraction + self.test_fraction >= 0.9:
            raise ValueError(
                f"val_fraction + test_fraction = {self.val_fraction + self.test_fraction:g} "
                "leaves too little training data: must be < 0.9"
            )
        return self


class MeanStd(StrictSection):
    """Per-channel normalisation, in [0, 1] units: the model sees (pixel - mean) / std."""

    mean: list[float]
    std: list[float]

    @model_validator(mode="after")
    def _per_channel(self) -> "MeanStd":
        if not self.mean or len(self.mean) != len(self.std):
            raise ValueError(f"mean {self.mean} and std {self.std} need one value per channel each")
        if min(self.std) <= 0:
            raise ValueError(f"std {self.std} must be positive")
        return self


# The pixel range a model expects (kdflow.input_adapter): the prepared images are in [0, 1].
STANDARD_RANGE_NAMES = ("unit", "byte", "symmetric")  # [0, 1], [0, 255], [-1, 1]
InputRange = Union[Literal[STANDARD_RANGE_NAMES], MeanStd]  # type: ignore[valid-type]


class ModelParams(ExtensionSection):
    """A model: ``arch`` is a preset or an architecture family (kdflow.architectures), whose own
    section (``spec:``, ``resnet:``, ...) sits beside it."""

    arch: str = "notebook_student"
    # The inputs the model expects: unit [0, 1] | byte [0, 255] | symmetric [-1, 1] |
    # {mean: [...], std: [...]} in [0, 1] units. The images stay [0, 1]; the mapping is the
    # model's first layer (so the exported student applies it too).
    input_range: InputRange = "unit"

    @field_validator("input_range", mode="before")
    @classmethod
    def _one_range(cls, value: Any) -> Any:
        # One message for the form given, not one per form of the union.
        if isinstance(value, dict):
            try:
                return MeanStd.model_validate(value)
            except ValidationError as exc:
                messages = (error["msg"].removeprefix("Value error, ") for error in exc.errors())
                raise ValueError("; ".join(messages)) from None
        if value not in STANDARD_RANGE_NAMES and not isinstance(value, MeanStd):
            raise ValueError(f"{value!r}: give unit, byte, symmetric or {{mean: [...], std: [...]}}")
        return value


class TeacherParams(ModelParams):
    # ResNet-20 (273k params on the digits, 13x the default student).
    arch: str = "resnet20"
    # train: build from arch and train it; file: the model at `path` (a .keras or .h5 file, or a
    # SavedModel directory) is the teacher (docs/own-data.md).
    source: Literal["train", "file"] = "train"
    path: str = INPUTS_DIR
    # Keras safe_mode refuses model files that carry code (Lambda layers), and SavedModel graphs
    # that read or write files. Turn it off only for a file you trust as you would a script.
    safe_mode: bool = True
    # The rest is for source: file. What its outputs are: auto = found out on the validation
    # images (rows of non-negative numbers summing to 1 are probabilities, else logits).
    outputs: Literal["auto", "logits", "probabilities"] = "auto"
    # [height, width] the teacher takes: the images are resized to it (bilinear) for the teacher only.
    image_size: Optional[list[int]] = None
    # The teacher's class names in its output order (when it differs from the data's).
    classes: Optional[list[Union[str, int]]] = None
    # A SavedModel's signature and output (needed only when it has several).
    signature: Optional[str] = None
    output_key: Optional[str] = None
    # Stop at import when the teacher looks wrong: another input range or class order clearly
    # better on validation, or near chance.
    check: bool = True

    @model_validator(mode="after")
    def _file_settings(self) -> "TeacherParams":
        if self.source == "file" and self.path.rstrip("/") == INPUTS_DIR:
            raise ValueError("source 'file' reads teacher.path: set it to a .keras or .h5 model file or a "
                             "SavedModel directory")
        given = [key for key in FILE_TEACHER_KEYS if getattr(self, key) != TeacherParams.model_fields[key].default]
        if self.source != "file" and given:
            raise ValueError(f"{given[0]} applies to a teacher from a file (source: file)")
        if self.image_size is not None and (len(self.image_size) != 2 or min(self.image_size) < 1):
            raise ValueError(f"image_size {self.image_size}: give [height, width], both positive")
        if self.classes is not None and len({str(c) for c in self.classes}) != len(self.classes):
            raise ValueError(f"classes {self.classes}: every name must appear once")
        return self

    @property
    def class_order(self) -> Optional[list[str]]:
        return None if self.classes is None else [str(c) for c in self.classes]


FILE_TEACHER_KEYS = ("outputs", "image_size", "classes", "signature", "output_key")


class AugmentParams(StrictSection):
    """The teacher's random training-time augmentation (Keras preprocessing layers, active
    only in training). Its `shift` is a *fraction* of the image size with sub-pixel (bilinear)
    translation, as Keras' RandomTranslation takes it; `crop` and `views.shift` are whole pixels."""

    # random translation, fraction of height/width: shifted digits make a stronger teacher
    shift: float = Field(0.1, ge=0, lt=0.5)
    flip: bool = False                        # random horizontal flip (not for digits!)
    crop: int = Field(0, ge=0)                # pad by `crop` pixels, then random crop back (= random shift of up to `crop` whole pixels)
    # [min, max] area: a fresh random-resized crop of each image every epoch (the `crop` view
    # kind, drawn from (seed, image, epoch); flipped with `flip`); null = off
    crop_scale: Optional[list[float]] = None

    @model_validator(mode="after")
    def _crop_scale(self) -> "AugmentParams":
        if self.crop_scale is not None and (len(self.crop_scale) != 2 or
                                            not 0 < self.crop_scale[0] <= self.crop_scale[1] <= 1):
            raise ValueError(f"crop_scale = {self.crop_scale}: must be [min, max] with 0 < min <= max <= 1")
        return self

    @property
    def enabled(self) -> bool:
        """Whether any of the Keras augmentation layers is on (crop_scale is not one of them)."""
        return self.shift > 0 or (self.flip and self.crop_scale is None) or self.crop > 0


class ViewsParams(ExtensionSection):
    """The augmented views both students train on: for every training image, ``count`` views of
    the view kind ``kind`` (kdflow.views), drawn once from the seed, each optionally flipped.
    soft_targets caches the teacher's outputs for every view; in each epoch a student sees one
    view of each image. The kind's own keys (``shift``, ...) sit beside these."""

    count: int = Field(8, ge=0, le=1024)  # views per training image; 0 = the images as they are
    kind: str = "shift"
    flip: bool = False                   # random horizontal flip (not for digits!)
    # A view may mix two training images (kdflow.views.MIXES): none | mixup | cutmix, the ratio
    # (mixup) or the pasted area (cutmix) drawn from Beta(mix_alpha, mix_alpha).
    mix: str = "none"
    mix_alpha: float = Field(1.0, gt=0)
    # Where the distilled students' teacher outputs come from: cached (soft_targets, for the count
    # views) or online (distill runs the teacher on every batch, a fresh view of every image each epoch).
    teacher: Literal["cached", "online"] = "cached"
    # Store only the teacher's top_k logits per view plus the remaining probability mass, shared
    # evenly by the other classes (FKD's marginal smoothing): a smaller cache on disk for many
    # classes (distill reads it a batch at a time and expands each batch to every class). 0 = every class.
    top_k: int = Field(0, ge=0)
    # The cached logits' storage: float16 halves the cache (distill reads them back as float32).
    cache_dtype: Literal["float32", "float16"] = "float32"


class TrainParams(StrictSection):
    """How a model trains (Adam, cosine decay, early stopping). The defaults are the students':
    a long schedule without early stopping, chosen on validation (docs/results.md)."""

    epochs: int = Field(100, ge=1)
    batch_size: int = Field(64, ge=1)
    learning_rate: float = Field(3e-3, gt=0, le=10)
    # CosineDecay's `alpha`: the final learning rate as a fraction of the initial one.
    lr_floor: float = Field(0.1, ge=0, le=1)
    amsgrad: bool = True
    # Epochs without val-loss improvement before stopping (best weights restored); null = off.
    patience: Optional[int] = Field(None, ge=1)


class TeacherTrainParams(TrainParams):
    epochs: int = Field(15, ge=1)
    learning_rate: float = Field(1e-3, gt=0, le=10)
    patience: Optional[int] = Field(5, ge=1)
    # Label smoothing of the teacher's targets (Szegedy et al. 2016); it softens the teacher's
    # outputs, and with them the students' soft targets. Students always train on plain labels.
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    augment: AugmentParams = AugmentParams()
    # Fine-tuning a pretrained teacher (teacher.weights): the first freeze_epochs train only the
    # logits layer, the rest train every layer at fine_tune_lr_scale * learning_rate (Keras'
    # transfer-learning recipe: a lower rate once the pretrained layers move). 0 = all layers throughout.
    freeze_epochs: int = Field(0, ge=0)
    fine_tune_lr_scale: float = Field(0.1, gt=0, le=1)

    @model_validator(mode="after")
    def _some_epochs_unfrozen(self) -> "TeacherTrainParams":
        if self.freeze_epochs >= self.epochs:
            raise ValueError(f"freeze_epochs = {self.freeze_epochs}: must be less than epochs ({self.epochs})")
        return self


class DistillParams(ExtensionSection):
    """The distillation method (kdflow.losses); each method's knobs are a sub-section named after it."""

    method: str = "kd"


class ExportParams(StrictSection):
    # Training images that calibrate the int8 quantization ranges (drawn with the seed).
    calibration_samples: int = Field(200, ge=1, le=100_000)


class RuntimeParams(StrictSection):
    """Where training runs (not what it learns): TensorFlow's distribution strategy, used by
    every training stage. Each global batch (train_*.batch_size) is split across the replicas."""

    # default: one device | mirrored: all local GPUs, else the CPU (split into cpu_replicas
    # logical devices) | multi_worker: the hosts named by the TF_CONFIG environment variable
    strategy: Literal["default", "mirrored", "multi_worker"] = "default"
    cpu_replicas: int = Field(1, ge=1, le=64)
    # Keras' dtype policy while training: mixed_* computes the layers in 16 bits with float32
    # weights (the losses stay float32; float16 gets Keras' loss scaling). Saved models are float32.
    precision: Literal["float32", "mixed_float16", "mixed_bfloat16"] = "float32"


class Params(StrictSection):
    seed: int = Field(42, ge=0, lt=2**31)
    # Students trained per stage; repeat i of distill and train_scratch share seed + i (paired).
    repeats: int = Field(5, ge=1, le=100)
    # Knowledge distillation: loss = alpha * CE(labels) + (1 - alpha) * soft term (T^2 * KL for kd)
    alpha: float = Field(0.1, ge=0, le=1)
    temperature: float = Field(2.0, gt=0, le=1000)
    data: DataParams = DataParams()
    teacher: TeacherParams = TeacherParams()
    student: ModelParams = ModelParams()
    train_teacher: TeacherTrainParams = TeacherTrainParams()
    train_student: TrainParams = TrainParams()
    views: ViewsParams = ViewsParams()
    distill: DistillParams = DistillParams()
    export: ExportParams = ExportParams()
    runtime: RuntimeParams = RuntimeParams()

    @model_validator(mode="before")
    @classmethod
    def _student_augmentation_is_views(cls, raw: Any) -> Any:
        if isinstance(raw, dict) and isinstance(raw.get("train_student"), dict) and "augment" in raw["train_student"]:
            raise ValueError("train_student.augment: not a key: the students' augmentation is the `views` "
                             "section, whose views the teacher's outputs are cached for (docs/params.md)")
        return raw


def compose_section(name: str, bases: tuple[type, ...], fields: dict[str, tuple[Any, Any]], check=None) -> type:
    """An extension point's section: ``bases`` (a core section and its entries' sections, whose
    fields it inherits) plus ``fields`` (name -> (type, default)), strict and closed to unknown
    keys; ``check(self)`` validates the whole (raise ValueError)."""
    namespace: dict[str, Any] = {"__annotations__": {key: kind for key, (kind, _) in fields.items()},
                                 **{key: default for key, (_, default) in fields.items()},
                                 "model_config": ConfigDict(extra="forbid")}
    if check is not None:
        namespace["_check"] = model_validator(mode="after")(check)
    return type(name, bases, namespace)


def flat_section(core: type[ExtensionSection], registry, selector: str, check=None) -> type:
    """The section ``core`` composed with a registry whose entries' keys sit beside the core
    fields (``views.shift``, ``data.image_size``): ``selector`` names one entry of it."""
    bases = (core, *(entry.section for entry in registry if entry.section is not None))
    choice = Literal[registry.names()]  # type: ignore[valid-type]
    return compose_section(core.__name__, bases, {selector: (choice, core.model_fields[selector].default)}, check)


# Core keys that change only the distilled students (the recipe search asks, with the sections
# of the extension points whose registry says so: kdflow.extensions.distilled_only).
DISTILLED_ONLY_KEYS = ("alpha", "temperature")


@functools.lru_cache(maxsize=None)
def params_model(*extensions) -> type[Params]:
    """The schema with the sections of ``extensions`` (registries) composed in."""
    fields = {name: (section, section()) for ext in extensions for name, section in ext.sections.items()}
    return create_model("Params", __base__=Params, **fields) if fields else Params


def _describe(error: dict[str, Any]) -> str:
    """One pydantic error as one line that names the key."""
    key = ".".join(str(part) for part in error["loc"]) or "(top level)"
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "missing":
        return f"{key}: required key is missing"
    if error["type"] == "extra_forbidden":
        return f"{key}: unknown key (check the spelling; see docs/params.md)"
    if error["type"].startswith("model_") or error["type"] == "value_error":
        return message if not error["loc"] else f"{key}: {message}"
    return f"{key} = {error.get('input')!r}: {message}"


def validate(raw: Any, *extensions, source: str = "params.yaml") -> Params:
    """Validate a params mapping (the core, and the sections of ``extensions``); raise
    KdflowError with one line per problem (first shown)."""
    if not isinstance(raw, dict):
        raise KdflowError(f"{source}: expected a mapping of params, got {type(raw).__name__}")
    try:
        return params_model(*extensions).model_validate(raw)
    except ValidationError as exc:
        problems = [_describe(e) for e in exc.errors()]
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise KdflowError(f"{source}: {problems[0]}{more}") from None


def read_yaml(path: str | Path = PARAMS_FILE) -> Any:
    """params.yaml as YAML data; a missing or unparsable file is one line."""
    path = Path(path)
    try:
        return yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise KdflowError(f"{path}: file not found (run from the project root)") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise KdflowError(f"{path}: not valid YAML{where}") from None


def load_params(*extensions, path: str | Path = PARAMS_FILE) -> Params:
    """params.yaml, validated with the sections of ``extensions`` (the registries the caller
    uses). With KDFLOW_PARAMS_LOG set, a view that records the keys read (kdflow.param_usage)."""
    params = validate(read_yaml(path), *extensions, source=str(path))
    log = os.environ.get(LOG_ENV)
    if log:
        return recording(params, log)
    return params
