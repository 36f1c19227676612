"""The one schema for params.yaml, and the one place for every default.

Every stage validates through ``load_params``. The committed params.yaml spells out exactly
these defaults (tests/test_consistency.py checks it), so a key left out of a user's params.yaml
means the same as the committed value. Kept free of TensorFlow so that a typo in params.yaml is
reported in well under a second.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal, Optional

import yaml
from pydantic import Field, ValidationError, model_validator

from kdflow.architectures import ARCHS, PRESETS, ArchSpec, ResNetSpec, StrictSection
from kdflow.errors import KdflowError
from kdflow.param_usage import LOG_ENV, recording
from kdflow.paths import PARAMS_FILE

KERAS_DATASETS = ("mnist", "fashion_mnist", "cifar10", "cifar100")
FILE_SOURCES = ("npz", "image_dir")  # read from data.path
DATASETS = ("mnist5k", *KERAS_DATASETS, *FILE_SOURCES)
# The default of every `path` param: a tracked, nearly empty folder. dvc.yaml declares
# ${data.path} and ${teacher.path} as dependencies, and a dependency must exist even when unused.
INPUTS_DIR = "inputs"


class DataParams(StrictSection):
    name: Literal[DATASETS] = "mnist5k"  # type: ignore[valid-type]
    path: str = INPUTS_DIR  # the .npz file (name: npz) or the image folder (name: image_dir)
    image_size: list[int] = Field(default_factory=lambda: [32, 32])  # image_dir: [height, width]
    color_mode: Literal["rgb", "grayscale"] = "rgb"  # image_dir only
    val_fraction: float = Field(0.1, gt=0, lt=0.5)
    test_fraction: float = Field(0.2, gt=0, lt=0.5)

    @model_validator(mode="after")
    def _consistent(self) -> "DataParams":
        if self.val_fraction + self.test_fraction >= 0.9:
            raise ValueError(
                f"val_fraction + test_fraction = {self.val_fraction + self.test_fraction:g} "
                "leaves too little training data: must be < 0.9"
            )
        if len(self.image_size) != 2 or min(self.image_size) < 4:
            raise ValueError(f"image_size = {self.image_size}: must be [height, width], each >= 4")
        if self.name in FILE_SOURCES and self.path == INPUTS_DIR:
            raise ValueError(f"name '{self.name}' reads data.path: set it to your "
                             f"{'.npz file' if self.name == 'npz' else 'image folder'}")
        return self


class ModelParams(StrictSection):
    arch: Literal[ARCHS] = "notebook_student"  # type: ignore[valid-type]
    spec: Optional[ArchSpec] = None      # when arch: spec
    resnet: Optional[ResNetSpec] = None  # when arch: resnet

    @model_validator(mode="after")
    def _section_when_needed(self) -> "ModelParams":
        for form in ("spec", "resnet"):
            given = getattr(self, form) is not None
            if self.arch == form and not given:
                raise ValueError(f"arch '{form}' needs a '{form}' section (see docs/params.md)")
            if self.arch != form and given:
                raise ValueError(f"arch is '{self.arch}': remove the '{form}' section or set arch: {form}")
        return self

    def resolved_spec(self) -> ArchSpec | ResNetSpec:
        if self.arch in ("spec", "resnet"):
            return getattr(self, self.arch)
        return PRESETS[self.arch]


class TeacherParams(ModelParams):
    # ResNet-20 (273k params on the digits, 13x the default student).
    arch: Literal[ARCHS] = "resnet20"  # type: ignore[valid-type]
    # train: build from arch and train it; file: use the .keras model at `path` as the teacher.
    source: Literal["train", "file"] = "train"
    path: str = INPUTS_DIR
    # Keras safe_mode refuses model files that carry code (Lambda layers). Turn it off only for
    # a file you trust as you would trust a script: loading it can run arbitrary code.
    safe_mode: bool = True

    @model_validator(mode="after")
    def _path_when_file(self) -> "TeacherParams":
        if self.source == "file" and not self.path.endswith(".keras"):
            raise ValueError(f"source 'file' reads teacher.path: set it to a .keras model file (got {self.path!r})")
        return self


class AugmentParams(StrictSection):
    """The teacher's random training-time augmentation (Keras preprocessing layers, active
    only in training)."""

    # random translation, fraction of height/width: shifted digits make a stronger teacher
    shift: float = Field(0.1, ge=0, lt=0.5)
    flip: bool = False                        # random horizontal flip (not for digits!)
    crop: int = Field(0, ge=0)                # pad by `crop` pixels, then random crop back (= random shift of up to `crop` whole pixels)

    @property
    def enabled(self) -> bool:
        return self.shift > 0 or self.flip or self.crop > 0


class ViewsParams(StrictSection):
    """The augmented views both students train on (kdflow.views): for every training image,
    ``count`` views drawn once from the seed, each a random shift of up to ``shift`` whole
    pixels (zero fill) and, with ``flip``, a random horizontal flip. soft_targets caches the
    teacher's outputs for every view; in each epoch a student sees one view of each image."""

    count: int = Field(8, ge=0, le=256)  # views per training image; 0 = the images as they are
    shift: int = Field(2, ge=0)          # largest shift, whole pixels along each axis
    flip: bool = False                   # random horizontal flip (not for digits!)
    # Cache only the teacher's top_k logits per view plus the remaining probability mass, shared
    # evenly by the other classes (FKD's marginal smoothing): for many classes. 0 = every class.
    top_k: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _views_differ(self) -> "ViewsParams":
        if self.count > 0 and self.shift == 0 and not self.flip:
            raise ValueError(f"count = {self.count} with shift 0 and no flip: every view would be the image "
                             "itself; set views.shift or views.flip, or views.count: 0")
        return self


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


METHODS = ("kd", "dkd", "lskd", "dist", "mse", "fitnet")
# Methods that need the teacher's intermediate features (cached by `soft_targets`).
FEATURE_METHODS = ("fitnet",)


class DistillParams(StrictSection):
    method: Literal[METHODS] = "kd"  # type: ignore[valid-type]

    @property
    def needs_teacher_features(self) -> bool:
        return self.method in FEATURE_METHODS


class DkdParams(StrictSection):
    """Decoupled KD (Zhao et al. 2022): weights of the target / non-target class terms."""

    alpha: float = Field(1.0, ge=0)
    beta: float = Field(8.0, ge=0)
    # The soft term's weight ramps up linearly over the first epochs (0 = no warm-up).
    warmup_epochs: int = Field(5, ge=0)


class DistParams(StrictSection):
    """DIST (Huang et al. 2022): weights of the inter-class and intra-class relation terms."""

    beta: float = Field(1.0, ge=0)
    gamma: float = Field(1.0, ge=0)


class FitnetParams(StrictSection):
    """FitNets hint (Romero et al. 2015), used when distill.method = fitnet: the student layer's
    output goes through a learned linear projection and is regressed (MSE) onto the teacher
    layer's output; the term is added to the KD loss."""

    teacher_layer: str = "pool"  # the default ResNet teacher's global average pool
    student_layer: str = "flatten"
    weight: float = Field(1.0, ge=0)


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


class Params(StrictSection):
    seed: int = Field(42, ge=0, lt=2**31)
    # Students trained per stage; repeat i of distill and train_scratch share seed + i (paired).
    repeats: int = Field(5, ge=1, le=100)
    # Knowledge distillation: loss = alpha * CE(labels) + (1 - alpha) * T^2 * KL(teacher_T || student_T)
    alpha: float = Field(0.1, ge=0, le=1)
    temperature: float = Field(2.0, gt=0, le=1000)
    data: DataParams = DataParams()
    teacher: TeacherParams = TeacherParams()
    student: ModelParams = ModelParams()
    train_teacher: TeacherTrainParams = TeacherTrainParams()
    train_student: TrainParams = TrainParams()
    views: ViewsParams = ViewsParams()
    distill: DistillParams = DistillParams()
    dkd: DkdParams = DkdParams()
    dist: DistParams = DistParams()
    fitnet: FitnetParams = FitnetParams()
    export: ExportParams = ExportParams()
    runtime: RuntimeParams = RuntimeParams()

    @model_validator(mode="before")
    @classmethod
    def _student_augmentation_is_views(cls, raw: Any) -> Any:
        if isinstance(raw, dict) and isinstance(raw.get("train_student"), dict) and "augment" in raw["train_student"]:
            raise ValueError("train_student.augment: not a key: the students' augmentation is the `views` "
                             "section, whose views the teacher's outputs are cached for (docs/params.md)")
        return raw


def _describe(error: dict[str, Any]) -> str:
    key = ".".join(str(part) for part in error["loc"]) or "(top level)"
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "missing":
        return f"{key}: required key is missing"
    if error["type"] == "extra_forbidden":
        return f"{key}: unknown key (check the spelling; see docs/params.md)"
    if error["type"].startswith("model_") or error["type"] == "value_error":
        return message if not error["loc"] else f"{key}: {message}"
    return f"{key} = {error.get('input')!r}: {message}"


def validate(raw: Any, source: str = "params.yaml") -> Params:
    """Validate a params mapping; raise KdflowError with one line per problem (first shown)."""
    if not isinstance(raw, dict):
        raise KdflowError(f"{source}: expected a mapping of params, got {type(raw).__name__}")
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        problems = [_describe(e) for e in exc.errors()]
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise KdflowError(f"{source}: {problems[0]}{more}") from None


def load_params(path: str | Path = PARAMS_FILE) -> Params:
    """params.yaml, validated. With KDFLOW_PARAMS_LOG set, a view that records the keys read
    (kdflow.param_usage)."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise KdflowError(f"{path}: file not found (run from the project root)") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise KdflowError(f"{path}: not valid YAML{where}") from None
    params = validate(raw, str(path))
    log = os.environ.get(LOG_ENV)
    if log:
        return recording(params, log)
    return params
