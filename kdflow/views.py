"""Augmented views of the training images, shared by the teacher's cache and both students, and
the view kinds (an extension point, kdflow.registry).

A view kind draws a table of integer parameters, one row per (image, view), and builds the
views of a batch from its rows. The table is a pure function of (seed, image, view), drawn
with TensorFlow's stateless random ops, so `soft_targets` (which caches the teacher's outputs
for every view) and the student stages (which rebuild the views on the fly) derive the same
table from the params, and the kind builds the same pixels on both sides. In epoch e, sample i
of a student sees view ``choice(seed, e)[i]``, also a pure function, so the distilled and the
scratch student of one repeat see identical view sequences (FKD, Shen & Xing 2022; Beyer et al.
2022: the teacher's output for the very view the student sees).

Adding a kind: a section class for its keys (they sit in ``views`` beside count, kind, flip and
top_k), a ``draw`` and an ``apply``, one ``VIEW_KINDS.add`` line (docs/extending.md). TensorFlow
is imported only when views are drawn or built.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
from pydantic import Field, model_validator

from kdflow.errors import KdflowError
from kdflow.params import StrictSection, ViewsParams, flat_section
from kdflow.registry import Registry

# Stream ids folded into the seed, so the view table and the per-epoch choice draw numbers
# independent of each other and of the other uses of the seed (data order, initial weights).
_TABLE_STREAM, _FLIP_STREAM, _CHOICE_STREAM = 0x7669, 0x666C, 0x6368


@dataclass(frozen=True)
class ViewKind:
    name: str
    # (seed, images, views section, image shape) -> int32 [images, views.count, columns]; row i
    # depends only on (seed, i, view index)
    draw: Callable[[int, int, Any, tuple[int, ...]], np.ndarray]
    # (images [b, H, W, C], their rows of the table [b, columns], views section) -> the views
    apply: Callable[[Any, Any, Any], Any]
    section: type[StrictSection] | None = None  # the kind's own keys in `views`
    # why every view would be the image itself (an error when views.count > 0), or None
    identity: Callable[[Any], str | None] = lambda cfg: None


@dataclass(frozen=True)
class Views:
    """The views of a training split: ``table`` [images, views, columns] of the kind ``cfg.kind``."""

    table: np.ndarray
    cfg: Any  # the validated `views` section

    @property
    def count(self) -> int:
        return self.table.shape[1]

    def apply(self, images, rows):
        """The views of a batch of images, given their rows of the table."""
        import tensorflow as tf

        return VIEW_KINDS[self.cfg.kind].apply(tf.convert_to_tensor(images), tf.cast(rows, tf.int32), self.cfg)

    def choice(self, seed, epoch, count_images: int):
        """The view each of ``count_images`` images is seen in during ``epoch`` (see ``choice``)."""
        return choice(seed, epoch, count_images, self.count)


@dataclass(frozen=True)
class EpochViews(Views):
    """A new view of every image in each epoch: view e of the table is epoch e's (the teacher's
    random-resized crops, train_teacher.augment.crop_scale). ``after(k)``: the same views for a
    run whose epoch 0 is epoch k (fine-tuning after the frozen epochs)."""

    offset: int = 0

    def after(self, epochs: int) -> "EpochViews":
        return EpochViews(self.table, self.cfg, self.offset + epochs)

    def choice(self, seed, epoch, count_images: int):
        import tensorflow as tf

        return tf.fill([count_images], tf.cast(epoch, tf.int32) + self.offset)


TEACHER_CROP_STREAM = 0x7463  # added to the seed for the teacher's crops


def for_training(seed: int, count_images: int, cfg, image_shape: tuple[int, ...]) -> Views | None:
    """The training split's views, or None when ``views.count`` is 0 (the images as they are)."""
    if cfg.count == 0:
        return None
    return Views(table(seed, count_images, cfg, image_shape), cfg)


def table(seed: int, count_images: int, cfg, image_shape: tuple[int, ...]) -> np.ndarray:
    """int32 [count_images, cfg.count, columns]: every view of every image, drawn by its kind."""
    return VIEW_KINDS[cfg.kind].draw(seed, count_images, cfg, tuple(image_shape))


def uniform(seed: int, stream: int, shape: tuple[int, ...], minval, maxval, dtype="int32") -> np.ndarray:
    """Stateless uniform draws of one stream of the seed, filled in row-major order (so the rows
    of the first n images do not depend on how many images there are)."""
    import tensorflow as tf

    return tf.random.stateless_uniform(shape, seed=(seed, stream), minval=minval, maxval=maxval,
                                       dtype=getattr(tf, dtype)).numpy()


def flips(seed: int, shape: tuple[int, ...], cfg) -> np.ndarray:
    """int32 [*shape, 1]: 1 where a view is flipped horizontally (never without views.flip)."""
    return uniform(seed, _FLIP_STREAM, (*shape, 1), 0, 2 if cfg.flip else 1)


def choice(seed, epoch, count_images: int, count_views: int):
    """int32 [count_images]: the view each image is seen in during ``epoch`` (pure function of
    (seed, epoch, image index))."""
    import tensorflow as tf

    pair = tf.stack([tf.cast(seed, tf.int64), tf.cast(epoch, tf.int64)])
    pair = tf.random.experimental.stateless_fold_in(pair, _CHOICE_STREAM)
    return tf.random.stateless_uniform((count_images,), seed=pair, minval=0, maxval=count_views,
                                       dtype=tf.int32)


# ---- shift: whole-pixel shifts (and flips) ------------------------------------------------------

class ShiftKnobs(StrictSection):
    shift: int = Field(2, ge=0)  # largest shift, whole pixels along each axis (zero fill)


DY, DX, FLIP = 0, 1, 2  # the columns of a shift view


def draw_shifts(seed: int, count_images: int, cfg, image_shape: tuple[int, ...]) -> np.ndarray:
    """(dy, dx, flip) of every view: shifts uniform in [-shift, shift] whole pixels."""
    height, width = image_shape[:2]
    if 2 * cfg.shift >= min(height, width):
        raise KdflowError(f"views.shift = {cfg.shift}: must be less than half the image size "
                          f"({height}x{width})")
    shape = (count_images, cfg.count)
    shifts = uniform(seed, _TABLE_STREAM, (*shape, 2), -cfg.shift, cfg.shift + 1)
    return np.concatenate([shifts, flips(seed, shape, cfg)], axis=-1)


def apply_shifts(images, params, cfg):
    """Pure indexing into the zero-padded batch (no interpolation): exact and deterministic."""
    import tensorflow as tf

    height, width, pad = images.shape[1], images.shape[2], cfg.shift
    padded = tf.pad(images, [[0, 0], [pad, pad], [pad, pad], [0, 0]])
    rows = tf.range(height)[None, :] - params[:, DY:DY + 1] + pad
    cols = tf.range(width)[None, :]
    flip = params[:, FLIP:FLIP + 1]
    # shift after flip: output column x shows input column (W-1-x)+dx if flipped, x-dx if not
    cols = tf.where(flip == 1, width - 1 - cols + params[:, DX:DX + 1], cols - params[:, DX:DX + 1]) + pad
    return tf.gather(tf.gather(padded, rows, axis=1, batch_dims=1), cols, axis=2, batch_dims=1)


def _shift_identity(cfg) -> str | None:
    if cfg.shift == 0 and not cfg.flip:
        return "shift 0 and no flip: every view would be the image itself; set views.shift or views.flip"
    return None


# ---- crop: random-resized crops (and flips), as FKD stores them ------------------------------------

class CropKnobs(StrictSection):
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


def draw_crops(seed: int, count_images: int, cfg, image_shape: tuple[int, ...]) -> np.ndarray:
    """(y0, x0, h, w, flip) of every view: the area and the log aspect ratio uniform in their
    ranges, h and w rounded to whole pixels and clipped to the image, the box placed uniformly."""
    height, width = image_shape[:2]
    if min(height, width) < 2:
        raise KdflowError(f"views.kind = crop: needs images of at least 2x2 pixels (got {height}x{width})")
    shape = (count_images, cfg.count)
    # float64 arithmetic on the drawn numbers: every machine rounds the same boxes
    u = uniform(seed, _TABLE_STREAM, (*shape, 4), 0.0, 1.0, dtype="float32").astype(np.float64)
    area = height * width * (cfg.scale[0] + (cfg.scale[1] - cfg.scale[0]) * u[..., 0])
    log_low, log_high = np.log(cfg.ratio[0]), np.log(cfg.ratio[1])
    aspect = np.exp(log_low + (log_high - log_low) * u[..., 1])
    w = np.clip(np.rint(np.sqrt(area * aspect)), 1, width)
    h = np.clip(np.rint(np.sqrt(area / aspect)), 1, height)
    y0, x0 = np.floor(u[..., 2] * (height - h + 1)), np.floor(u[..., 3] * (width - w + 1))
    boxes = np.stack([y0, x0, h, w], axis=-1).astype(np.int32)
    return np.concatenate([boxes, flips(seed, shape, cfg)], axis=-1)


def apply_crops(images, params, cfg):
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


def _crop_identity(cfg) -> str | None:
    if cfg.scale == [1.0, 1.0] and cfg.ratio[0] == cfg.ratio[1] and not cfg.flip:
        return "scale [1, 1], one ratio and no flip: every view would be the same crop; widen views.scale or views.ratio"
    return None


# ---- the registry -------------------------------------------------------------------------------------

def _compose(kinds: Registry[ViewKind]) -> dict[str, type]:
    def check(self):
        why = kinds[self.kind].identity(self)
        if self.count > 0 and why:
            raise ValueError(f"count = {self.count} with {why}, or views.count: 0")
        return self

    return {"views": flat_section(ViewsParams, kinds, "kind", check)}


VIEW_KINDS: Registry[ViewKind] = Registry("view kind", "views.kind", _compose)
VIEW_KINDS.add(ViewKind("shift", draw_shifts, apply_shifts, ShiftKnobs, _shift_identity))
VIEW_KINDS.add(ViewKind("crop", draw_crops, apply_crops, CropKnobs, _crop_identity))


def knobs(cfg) -> dict[str, Any]:
    """The keys of ``views`` that shape its views: the common ones and its kind's (for the report)."""
    kind = VIEW_KINDS[cfg.kind]
    own = tuple(kind.section.model_fields) if kind.section else ()
    return {f"views.{key}": getattr(cfg, key) for key in ("count", "kind", *own, "flip")}
