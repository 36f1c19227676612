"""The view kinds and their registry ``VIEW_KINDS``: how a kind draws its rows of the view table
and builds the views of a batch from them.

A kind's ``draw`` gives int32 [images, views.count, columns], row i a function of (seed, i, view)
only; its ``apply`` turns a batch of images and their rows into the views, the same pixels
wherever it runs (the teacher's cache, the students' batches). Its keys sit in ``views`` beside
the section's own: its knobs class is a base of kdflow.views.params.ViewsParams.

Adding a kind: its knobs class, ``draw``, ``apply`` and ``identity``, one ``VIEW_KINDS`` line
here, and its knobs class among ViewsParams' bases (docs/extending.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
from pydantic import Field, model_validator

from kdflow.core import KdflowError
from kdflow.core.params import Section
from kdflow.views.draws import TABLE, flips, uniform


@dataclass(frozen=True)
class ViewKind:
    knobs: type[Section]  # its keys in `views` (a base of ViewsParams)
    # (seed, images, views section, image shape) -> int32 [images, views.count, columns]; row i
    # depends only on (seed, i, view index)
    draw: Callable[[int, int, Any, tuple[int, ...]], np.ndarray]
    # (images [b, H, W, C], their rows of the table [b, columns], views section) -> the views
    apply: Callable[[Any, Any, Any], Any]
    # why every view would be the image itself (an error when views.count > 0), or None
    identity: Callable[[Any], str | None] = lambda views: None


# ---- shift: whole-pixel shifts (and flips) ------------------------------------------------------

class ShiftKnobs(Section):
    shift: int = Field(2, ge=0)  # largest shift, whole pixels along each axis (zero fill)


DY, DX, FLIP = 0, 1, 2  # the columns of a shift view


def draw_shifts(seed: int, count_images: int, views, image_shape: tuple[int, ...]) -> np.ndarray:
    """(dy, dx, flip) of every view: shifts uniform in [-shift, shift] whole pixels."""
    height, width = image_shape[:2]
    if 2 * views.shift >= min(height, width):
        raise KdflowError(f"views.shift = {views.shift}: must be less than half the image size "
                          f"({height}x{width})")
    shape = (count_images, views.count)
    shifts = uniform(seed, TABLE, (*shape, 2), -views.shift, views.shift + 1)
    return np.concatenate([shifts, flips(seed, shape, views.flip)], axis=-1)


def apply_shifts(images, params, views):
    """Pure indexing into the zero-padded batch (no interpolation): exact and deterministic."""
    import tensorflow as tf

    height, width, pad = images.shape[1], images.shape[2], views.shift
    padded = tf.pad(images, [[0, 0], [pad, pad], [pad, pad], [0, 0]])
    rows = tf.range(height)[None, :] - params[:, DY:DY + 1] + pad
    cols = tf.range(width)[None, :]
    flip = params[:, FLIP:FLIP + 1]
    # shift after flip: output column x shows input column (W-1-x)+dx if flipped, x-dx if not
    cols = tf.where(flip == 1, width - 1 - cols + params[:, DX:DX + 1], cols - params[:, DX:DX + 1]) + pad
    return tf.gather(tf.gather(padded, rows, axis=1, batch_dims=1), cols, axis=2, batch_dims=1)


def _shift_identity(views) -> str | None:
    if views.shift == 0 and not views.flip:
        return "shift 0 and no flip: every view would be the image itself; set views.shift or views.flip"
    return None


# ---- crop: random-resized crops (and flips), as FKD stores them ------------------------------------

class CropKnobs(Section):
    """A random-resized crop (Szegedy et al. 2015's Inception crop, torchvision's default): a box
    of `scale` of the image's area and aspect ratio (width / height) in `ratio`, resized back to
    the image size (bilinear)."""

    scale: list[float] = Field(default_factory=lambda: [0.08, 1.0])  # [min, max] area fraction
    ratio: list[float] = Field(default_factory=lambda: [0.75, 4 / 3])  # [min, max] width / height

    @model_validator(mode="after")
    def _ranges(self) -> "CropKnobs":
        if len(self.scale) != 2 or not 0 < self.scale[0] <= self.scale[1] <= 1:
            raise ValueError(f"scale = {self.scale}: must be [min, max] with 0 < min <= max <= 1")
        if len(self.ratio) != 2 or not 0 < self.ratio[0] <= self.ratio[1]:
            raise ValueError(f"ratio = {self.ratio}: must be [min, max] with 0 < min <= max")
        return self


Y0, X0, HEIGHT, WIDTH, CROP_FLIP = range(5)  # the columns of a crop view: its box in pixels, the flip


def draw_crops(seed: int, count_images: int, views, image_shape: tuple[int, ...]) -> np.ndarray:
    """(y0, x0, h, w, flip) of every view: the area and the log aspect ratio uniform in their
    ranges, h and w rounded to whole pixels and clipped to the image, the box placed uniformly."""
    height, width = image_shape[:2]
    if min(height, width) < 2:
        raise KdflowError(f"views.kind = crop: needs images of at least 2x2 pixels (got {height}x{width})")
    shape = (count_images, views.count)
    # float64 arithmetic on the drawn numbers: every machine rounds the same boxes
    u = uniform(seed, TABLE, (*shape, 4), 0.0, 1.0, dtype="float32").astype(np.float64)
    area = height * width * (views.scale[0] + (views.scale[1] - views.scale[0]) * u[..., 0])
    log_low, log_high = np.log(views.ratio[0]), np.log(views.ratio[1])
    aspect = np.exp(log_low + (log_high - log_low) * u[..., 1])
    w = np.clip(np.rint(np.sqrt(area * aspect)), 1, width)
    h = np.clip(np.rint(np.sqrt(area / aspect)), 1, height)
    y0, x0 = np.floor(u[..., 2] * (height - h + 1)), np.floor(u[..., 3] * (width - w + 1))
    boxes = np.stack([y0, x0, h, w], axis=-1).astype(np.int32)
    return np.concatenate([boxes, flips(seed, shape, views.flip)], axis=-1)


def apply_crops(images, params, views):
    """Each box resized back to the image size with TensorFlow's crop_and_resize (bilinear),
    mirrored when flipped: every box is computed on its own, so a view's pixels do not depend
    on the batch it is in."""
    import tensorflow as tf

    height, width = images.shape[1], images.shape[2]
    y0, x0, h, w, flip = (tf.cast(params[:, i], tf.float32) for i in (Y0, X0, HEIGHT, WIDTH, CROP_FLIP))
    top, bottom = y0 / (height - 1), (y0 + h - 1) / (height - 1)
    left, right = x0 / (width - 1), (x0 + w - 1) / (width - 1)
    # crop_and_resize samples a box from right to left when its x1 > x2: the mirrored crop
    left, right = tf.where(flip == 1, right, left), tf.where(flip == 1, left, right)
    boxes = tf.stack([top, left, bottom, right], axis=1)
    return tf.image.crop_and_resize(images, boxes, tf.range(tf.shape(images)[0]), (height, width))


def _crop_identity(views) -> str | None:
    if views.scale == [1.0, 1.0] and views.ratio[0] == views.ratio[1] and not views.flip:
        return "scale [1, 1], one ratio and no flip: every view would be the same crop; widen views.scale or views.ratio"
    return None


# ---- the registry --------------------------------------------------------------------------------

VIEW_KINDS: dict[str, ViewKind] = {
    "shift": ViewKind(ShiftKnobs, draw_shifts, apply_shifts, _shift_identity),
    "crop": ViewKind(CropKnobs, draw_crops, apply_crops, _crop_identity),
}
