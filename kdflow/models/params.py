"""The `teacher` and `student` sections of params.yaml: a model's architecture (a preset or a
family, with the family's knobs), its input convention, and for the teacher where it comes from."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Optional, Union

from pydantic import Field, field_validator, model_validator

from kdflow.core.paths import INPUTS_DIR
from kdflow.models.input_range import InputRange, parse_input_range
from kdflow.models.applications import ApplicationKnobs
from kdflow.models.families import FAMILIES, PRESETS, ArchSpec, ResNetSpec

Arch = Literal[(*PRESETS, *FAMILIES)]  # type: ignore[valid-type]


class ModelParams(ApplicationKnobs):
    """A model: ``arch`` is a preset or an architecture family. A family's knobs are its
    sub-section (``spec:``, ``resnet:``), given exactly when ``arch`` names it; a keras.applications
    model's (``width``, ``dropout``, ``weights``, inherited) sit beside ``arch``."""

    arch: Arch = "notebook_student"
    # The inputs the model expects: unit [0, 1] | byte [0, 255] | symmetric [-1, 1] |
    # {mean: [...], std: [...]} in [0, 1] units. The images stay [0, 1]; the mapping is the
    # model's first layer (so the exported student applies it too).
    input_range: InputRange = "unit"
    spec: Optional[ArchSpec] = None
    resnet: Optional[ResNetSpec] = None

    @field_validator("input_range", mode="before")
    @classmethod
    def _one_range(cls, value: Any) -> Any:
        return parse_input_range(value)

    @model_validator(mode="after")
    def _family_knobs(self) -> "ModelParams":
        flat = self.arch in FAMILIES and FAMILIES[self.arch].flat
        if not flat:
            for key, field in ApplicationKnobs.model_fields.items():
                if getattr(self, key) != field.default:
                    raise ValueError(f"{key} applies to a keras.applications arch, not {self.arch}")
        for name, family in FAMILIES.items():
            if family.flat:
                continue
            given = getattr(self, name) is not None
            if self.arch == name and not given:
                raise ValueError(f"arch '{name}' needs a '{name}' section (see docs/params.md)")
            if self.arch != name and given:
                raise ValueError(f"arch is '{self.arch}': remove the '{name}' section or set arch: {name}")
        return self


class StudentParams(ModelParams):
    """The `student` section (default: the Keras notebook's Conv12 -> MaxPool -> Dense)."""


# The keys that describe a teacher from a file, found out at import or given when the check asks.
FILE_TEACHER_KEYS = ("outputs", "image_size", "classes", "classes_file", "signature", "output_key")


class TeacherParams(ModelParams):
    """The `teacher` section: trained from ``arch`` (ResNet-20 by default: 273k params on the
    digits, 13x the student), or the user's model file (``source: file``, docs/own-data.md)."""

    arch: Arch = "resnet20"
    # train: build from arch and train it; file: the model at `path` (a .keras or .h5 file, or a
    # SavedModel directory) is the teacher.
    source: Literal["train", "file"] = "train"
    path: str = INPUTS_DIR
    # An ensemble: train this many members from arch, member i with seed + i (source: train), or
    # give a folder of teacher files as path (source: file). How their outputs make one teacher's:
    # the mean of their probabilities, or of their logits.
    members: int = Field(1, ge=1)
    ensemble: Literal["probabilities", "logits"] = "probabilities"
    # Keras safe_mode refuses model files that carry code (Lambda layers), and SavedModel graphs
    # that read or write files. Turn it off only for a file you trust as you would a script.
    safe_mode: bool = True
    # The rest is for source: file. What its outputs are: auto = found out on the validation
    # images (rows of non-negative numbers summing to 1 are probabilities, else logits).
    outputs: Literal["auto", "logits", "probabilities"] = "auto"
    # [height, width] the teacher takes: the images are resized to it (bilinear) for the teacher only.
    image_size: Optional[list[int]] = None
    # The teacher's class names in its output order (when it differs from the data's, or it has
    # classes the data does not: the data's classes select their outputs). Or classes_file: a text
    # file of the names, one a line (as ImageNet's class lists come), a DVC dependency of
    # train_teacher (the default is the placeholder folder, as for path).
    classes: Optional[list[Union[str, int]]] = None
    classes_file: str = INPUTS_DIR
    # A SavedModel's signature and output (needed only when it has several).
    signature: Optional[str] = None
    output_key: Optional[str] = None
    # Stop at import when the teacher looks wrong: another input range or class order clearly
    # better on validation, or near chance.
    check: bool = True

    @model_validator(mode="after")
    def _file_settings(self) -> "TeacherParams":
        if self.source == "file" and self.members != 1:
            raise ValueError(f"members = {self.members} applies to trained teachers (source: train); an ensemble "
                             "from files is a folder of them as path")
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
        if self.classes is not None and self.classes_file.rstrip("/") != INPUTS_DIR:
            raise ValueError("classes and classes_file: give the teacher's class names once")
        return self

    @property
    def class_order(self) -> Optional[list[str]]:
        """The teacher's class names in its output order as text (YAML reads digit names as
        numbers): teacher.classes, or the lines of teacher.classes_file; None if neither is given."""
        if self.classes is not None:
            return [str(c) for c in self.classes]
        if self.classes_file.rstrip("/") == INPUTS_DIR:
            return None
        return read_class_names(self.classes_file)


def read_class_names(path: str) -> list[str]:
    """The class names in a text file, one a line (surrounding blanks and empty lines ignored)."""
    from kdflow.core import KdflowError

    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise KdflowError(f"teacher.classes_file = {path}: cannot read it as text ({exc.__class__.__name__})") from None
    names = [line.strip() for line in text.splitlines() if line.strip()]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if not names or repeated:
        raise KdflowError(f"teacher.classes_file = {path}: " + (f"{repeated[0]!r} appears more than once"
                                                              if repeated else "holds no names"))
    return names
