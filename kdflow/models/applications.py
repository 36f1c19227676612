"""keras.applications models as architecture families: the backbones people ship (MobileNetV2/V3,
EfficientNet B0-B3 and V2B0-V2B3, ResNet50V2, ConvNeXtTiny). Each is a ``flat`` family: its keys
(``width``, ``dropout``, ``weights``) sit beside ``arch``; its input convention is a layer inside
the model. Adding one is a line in ``APPLICATIONS`` (docs/extending.md)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Optional

from pydantic import Field, field_validator, model_validator

from kdflow.core import KdflowError, first_line
from kdflow.core.params import Section
from kdflow.core.paths import INPUTS_DIR
from kdflow.models import input_range


class ApplicationKnobs(Section):
    """A keras.applications backbone (``include_top=False``, global average pooling), optional
    dropout, then a new Dense(num_classes) logits layer. These keys sit beside ``arch``."""

    width: float = Field(1.0, gt=0, le=4)  # the MobileNets' alpha (width multiplier); 1 for the others
    dropout: float = Field(0.0, ge=0, lt=1)  # before the logits layer
    # The backbone's starting weights: null (random), imagenet (downloaded by Keras: needs the
    # internet), or file: the file at weights_file, this backbone's weights without its top (as
    # Keras distributes them: the `..._no_top.h5` files).
    weights: Optional[Literal["imagenet", "file"]] = None
    # A path of its own, so that dvc.yaml lists the file as a dependency of the stages that read it
    # (a changed file reruns them); the default is the placeholder folder, as for teacher.path.
    weights_file: str = INPUTS_DIR

    @field_validator("weights", mode="before")
    @classmethod
    def _file_in_weights_file(cls, value: Any) -> Any:
        if isinstance(value, str) and value not in ("imagenet", "file"):
            raise ValueError(f"{value!r}: give the file as weights_file: {value} with weights: file (so that DVC "
                             "tracks it), or null or imagenet")
        return value

    @model_validator(mode="after")
    def _file_given(self) -> "ApplicationKnobs":
        placeholder = self.weights_file.rstrip("/") == INPUTS_DIR
        if self.weights == "file" and placeholder:
            raise ValueError("weights: file reads weights_file: set it to the backbone's no-top weights file")
        if self.weights != "file" and not placeholder:
            raise ValueError("weights_file applies with weights: file")
        return self


@dataclass(frozen=True)
class Application:
    """How kdflow builds one keras.applications model: the pixels it expects (mapped from the
    pipeline's [0, 1] by a Rescaling layer; its own normalisation is inside the model: its
    ``include_preprocessing`` where it has one), and whether it takes a width (alpha)."""

    pixels: str  # kdflow.models.input_range's name of the range: byte = [0, 255], symmetric = [-1, 1]
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


def builder(name: str) -> Callable[[ApplicationKnobs, Any, int], Any]:
    """The family builder of the keras.applications model ``name``."""
    def build(knobs: ApplicationKnobs, image, num_classes: int):
        import keras

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
        weights = knobs.weights_file if knobs.weights == "file" else knobs.weights
        if knobs.weights == "file" and not Path(weights).is_file():
            raise KdflowError(f"weights_file = {weights}: no such file")
        try:
            backbone = getattr(keras.applications, name)(
                include_top=False, weights=weights, input_shape=(height, width, channels), pooling="avg", **options)
        except Exception as exc:  # Keras raises ValueError for a mismatch, Exception for a failed download
            raise KdflowError(_build_problem(exc, weights, name)) from None
        h = backbone(input_range.apply(image, input_range.layers(app.pixels)))
        if knobs.dropout > 0:
            h = keras.layers.Dropout(knobs.dropout, name="dropout")(h)
        return keras.layers.Dense(num_classes, name="logits")(h)

    return build


def _build_problem(exc: Exception, weights: str | None, name: str) -> str:
    """The one line for a keras.applications model Keras would not build (after ``arch``'s section)."""
    text = first_line(exc)
    if weights is None:
        return f"arch = {name}: Keras could not build it ({text})"
    if weights == "imagenet" and ("URL fetch failure" in text or "http" in text.lower()):
        return (f"weights = imagenet: Keras could not download {name}'s ImageNet weights (offline?): download "
                "its no-top weights file where you are online and give its path")
    if weights == "imagenet":
        return f"weights = imagenet: {text}"
    return f"weights_file = {weights}: not weights for this {name} ({text})"
