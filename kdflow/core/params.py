"""params.yaml, typed: the core sections and loading the file, with one-line errors.

The sections whose keys come with the entries of a package are typed by that package, next to
those entries: ``data`` (kdflow.data.sources: a dataset source's keys), ``teacher`` and
``student`` (kdflow.models.params: an architecture family's), ``views`` (kdflow.views.params: a
view kind's and a mix's) and ``distill`` (kdflow.distill.methods: a method's). Here they are
plain mappings. A stage script declares the sections it reads as a subclass of ``Params`` that
types them, so the code that owns a section is a dependency of exactly the stages that read it.
kdflow/schema.py types every section at once (``kdflow check``, the docs, the tests).

No TensorFlow here: a typo in params.yaml is reported in well under a second. The committed
params.yaml spells out the defaults (tests/test_consistency.py checks it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal, Optional, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from kdflow.core import KdflowError
from kdflow.core.paths import PARAMS_FILE


class Section(BaseModel):
    """A params section: strict types (no silent "0.5" -> 0.5 or true -> 1), unknown keys are
    errors (a misspelt key is never ignored), immutable once validated."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


class AugmentParams(Section):
    """The teacher's random training-time augmentation (Keras preprocessing layers, active
    only in training). Its `shift` is a *fraction* of the image size with sub-pixel (bilinear)
    translation, as Keras' RandomTranslation takes it; `crop` and `views.shift` are whole pixels."""

    shift: float = Field(0.1, ge=0, lt=0.5)  # random translation, fraction of height/width
    flip: bool = False                        # random horizontal flip (not for digits!)
    crop: int = Field(0, ge=0)                # pad by `crop` pixels, then random crop back (a whole-pixel shift)
    # [min, max] area: a fresh random-resized crop of each image every epoch (the `crop` view
    # kind, drawn from (seed, image, epoch); flipped with `flip`); null = off
    crop_scale: Optional[list[float]] = None

    @model_validator(mode="after")
    def _crop_scale(self) -> "AugmentParams":
        if self.crop_scale is not None and (len(self.crop_scale) != 2 or
                                            not 0 < self.crop_scale[0] <= self.crop_scale[1] <= 1):
            raise ValueError(f"crop_scale = {self.crop_scale}: must be [min, max] with 0 < min <= max <= 1")
        return self


class TrainParams(Section):
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
    # After training: every batch-norm layer's stored statistics re-estimated at the final weights,
    # over one pass of the training images (kdflow.models.batch_norm). false = keep the moving averages.
    recompute_bn: bool = True


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


class ExportParams(Section):
    # Training images that calibrate the int8 quantization ranges (drawn with the seed).
    calibration_samples: int = Field(200, ge=1, le=100_000)


class RuntimeParams(Section):
    """Where training runs (not what it learns): TensorFlow's distribution strategy, used by
    every training stage. Each global batch (train_*.batch_size) is split across the replicas."""

    # default: one device | mirrored: all local GPUs, else the CPU (split into cpu_replicas
    # logical devices) | multi_worker: the hosts named by the TF_CONFIG environment variable
    strategy: Literal["default", "mirrored", "multi_worker"] = "default"
    cpu_replicas: int = Field(1, ge=1, le=64)
    # Keras' dtype policy while training: mixed_* computes the layers in 16 bits with float32
    # weights (the losses stay float32; float16 gets Keras' loss scaling). Saved models are float32.
    precision: Literal["float32", "mixed_float16", "mixed_bfloat16"] = "float32"
    # TensorBoard event files of every training run (tensorboard/<stage>/...), outside DVC's
    # outputs: they hold wall-clock times. It changes no output, so dvc.yaml does not list it.
    tensorboard: bool = False

    # Keys that change no output: not DVC params of any stage (tests/test_consistency.py).
    OUTPUT_FREE: ClassVar[tuple[str, ...]] = ("tensorboard",)


P = TypeVar("P", bound="Params")


class Params(Section):
    """params.yaml. The five sections typed by their packages are plain mappings here: a stage's
    subclass types those it reads (``views: ViewsParams = ViewsParams()``)."""

    seed: int = Field(42, ge=0, lt=2**31)
    # Students trained per stage; repeat i of distill and train_scratch share seed + i (paired).
    repeats: int = Field(5, ge=1, le=100)
    # Knowledge distillation: loss = alpha * CE(labels) + (1 - alpha) * soft term (T^2 * KL for kd)
    alpha: float = Field(0.1, ge=0, le=1)
    temperature: float = Field(2.0, gt=0, le=1000)
    data: dict[str, Any] = {}
    teacher: dict[str, Any] = {}
    student: dict[str, Any] = {}
    train_teacher: TeacherTrainParams = TeacherTrainParams()
    train_student: TrainParams = TrainParams()
    views: dict[str, Any] = {}
    distill: dict[str, Any] = {}
    export: ExportParams = ExportParams()
    runtime: RuntimeParams = RuntimeParams()

    @model_validator(mode="before")
    @classmethod
    def _student_augmentation_is_views(cls, raw: Any) -> Any:
        if isinstance(raw, dict) and isinstance(raw.get("train_student"), dict) and "augment" in raw["train_student"]:
            raise ValueError("train_student.augment: not a key: the students' augmentation is the `views` "
                             "section, whose views the teacher's outputs are cached for (docs/params.md)")
        return raw

    @classmethod
    def checked(cls: type[P], raw: Any, source: str = "params.yaml") -> P:
        """``raw`` validated; KdflowError with one line per problem (the first shown)."""
        if not isinstance(raw, dict):
            raise KdflowError(f"{source}: expected a mapping of params, got {type(raw).__name__}")
        try:
            return cls.model_validate(raw)
        except ValidationError as exc:
            problems = [_describe(e) for e in exc.errors()]
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            raise KdflowError(f"{source}: {problems[0]}{more}") from None

    @classmethod
    def load(cls: type[P], path: str | Path = PARAMS_FILE) -> P:
        """The params file, validated."""
        return cls.checked(read_yaml(path), source=str(path))


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


def read_yaml(path: str | Path = PARAMS_FILE) -> Any:
    """A params file as YAML data; a missing or unparsable file is one line."""
    path = Path(path)
    try:
        return yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise KdflowError(f"{path}: file not found (run from the project root)") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise KdflowError(f"{path}: not valid YAML{where}") from None
