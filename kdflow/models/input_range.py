"""A model's input convention, as params and as its first layers: the prepared images are pixels
in [0, 1], and a model that expects [0, 255], [-1, 1] or a per-channel mean/std gets them mapped
there (a Rescaling layer); a teacher of another resolution gets them resized (bilinear). Both are
plain Keras layers, so the saved model loads with safe_mode and the export carries them."""

from __future__ import annotations

from typing import Any, Literal, Union

from pydantic import ValidationError, model_validator

from kdflow.core import KdflowError
from kdflow.core.params import Section


class MeanStd(Section):
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


# name -> (scale, offset): the model sees pixel * scale + offset
STANDARD_RANGES = {"unit": (1.0, 0.0), "byte": (255.0, 0.0), "symmetric": (2.0, -1.0)}
InputRange = Union[Literal[tuple(STANDARD_RANGES)], MeanStd]  # type: ignore[valid-type]
# keras.applications' "torch" mode (ConvNeXt, ...): the usual ImageNet statistics.
IMAGENET = MeanStd(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])


def parse_input_range(value: Any) -> Any:
    """An input_range as given in params.yaml, with one message for the form given (not one per
    form of the union): a pydantic "before" validator of the sections that hold one."""
    if isinstance(value, dict):
        try:
            return MeanStd.model_validate(value)
        except ValidationError as exc:
            messages = (error["msg"].removeprefix("Value error, ") for error in exc.errors())
            raise ValueError("; ".join(messages)) from None
    if value not in STANDARD_RANGES and not isinstance(value, MeanStd):
        raise ValueError(f"{value!r}: give unit, byte, symmetric or {{mean: [...], std: [...]}}")
    return value


def scale_offset(input_range: InputRange) -> tuple:
    if isinstance(input_range, MeanStd):
        return ([1 / s for s in input_range.std], [-m / s for m, s in zip(input_range.mean, input_range.std)])
    return STANDARD_RANGES[input_range]


def describe(input_range: InputRange) -> str:
    """How the range reads in a message: '[0, 255]', 'mean [0.485, ...] / std [...]'."""
    if isinstance(input_range, MeanStd):
        return f"mean {input_range.mean} / std {input_range.std}"
    return {"unit": "[0, 1]", "byte": "[0, 255]", "symmetric": "[-1, 1]"}[input_range]


def as_param(input_range: InputRange) -> str:
    """The params.yaml value that selects ``input_range``."""
    if isinstance(input_range, MeanStd):
        return f"{{mean: {input_range.mean}, std: {input_range.std}}}"
    return input_range


def candidates(input_range: InputRange, channels: int) -> list[InputRange]:
    """The standard conventions to try a teacher under, ``input_range`` first."""
    tried = [input_range, *(name for name in STANDARD_RANGES if name != input_range)]
    if channels == len(IMAGENET.mean) and input_range != IMAGENET:
        tried.append(IMAGENET)
    return tried


def layers(input_range: InputRange, image_size: list[int] | None = None, channels: int | None = None) -> list:
    """The Keras layers that map [0, 1] images to the model's convention (none for 'unit' at the
    data's own size)."""
    import keras

    found = []
    if isinstance(input_range, MeanStd) and channels is not None and len(input_range.mean) not in (1, channels):
        raise KdflowError(f"input_range: mean/std give {len(input_range.mean)} values, but the images have "
                          f"{channels} channels")
    if input_range != "unit":
        scale, offset = scale_offset(input_range)
        found.append(keras.layers.Rescaling(scale, offset, name="input_range"))
    if image_size is not None:
        found.append(keras.layers.Resizing(*image_size, interpolation="bilinear", name="resize"))
    return found


def apply(tensor, layer_list: list):
    for layer in layer_list:
        tensor = layer(tensor)
    return tensor
