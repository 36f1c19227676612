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

A view may also be a *mixture* of two training images (``views.mix``: mixup or cutmix, Beyer
et al. 2022's function matching): its row then ends with the mix's columns, the partner image's
index and the ratio or the box, drawn the same stateless way, so the teacher's cached output is
its output on that exact mixed image (as SRe2L's relabel stores it) and the students rebuild it
bit for bit. Each of the two images is first put in its own geometric view (the partner in its
row of the same view column), then the two are mixed; the scratch students learn the mixed
labels (``label_weight``: the share of the image's own label).

Adding a kind: a section class for its keys (they sit in ``views`` beside count, kind, flip and
top_k), a ``draw`` and an ``apply``, one ``VIEW_KINDS.add`` line (docs/extending.md); a mix is one
``MIXES.add`` line the same way. TensorFlow is imported only when views are drawn or built.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Literal

import numpy as np
from pydantic import Field, model_validator

from kdflow.errors import KdflowError
from kdflow.params import StrictSection, ViewsParams, compose_section, flat_section
from kdflow.registry import Registry

# Stream ids folded into the seed, so the view table and the per-epoch choice draw numbers
# independent of each other and of the other uses of the seed (data order, initial weights).
_TABLE_STREAM, _FLIP_STREAM, _CHOICE_STREAM = 0x7669, 0x666C, 0x6368
_PARTNER_STREAM, _MIX_STREAM = 0x7061, 0x6D78


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

    @property
    def mixed(self) -> bool:
        return self.cfg.mix != "none"

    def partners(self, rows):
        """The partner image of each row's mixture (int32 [b]); only when ``mixed``."""
        return rows[..., -MIXES[self.cfg.mix].columns]

    def apply(self, images, rows, partner_images=None, partner_rows=None):
        """The views of a batch of images, given their rows of the table; a mixture needs the
        partner images (``partners(rows)``) and their rows of the same view column."""
        import tensorflow as tf

        kind = VIEW_KINDS[self.cfg.kind]
        rows = tf.cast(rows, tf.int32)
        views = kind.apply(tf.convert_to_tensor(images), rows, self.cfg)
        if not self.mixed:
            return views
        partner_views = kind.apply(tf.convert_to_tensor(partner_images), tf.cast(partner_rows, tf.int32), self.cfg)
        mix = MIXES[self.cfg.mix]
        return mix.apply(views, partner_views, rows[:, -mix.columns + 1:])

    def label_weight(self, rows, image_shape):
        """float32 [b]: the share of each mixed view's own label (the rest is its partner's)."""
        import tensorflow as tf

        mix = MIXES[self.cfg.mix]
        return mix.weight(tf.cast(rows, tf.int32)[:, -mix.columns + 1:], image_shape)

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


def for_training(seed: int, count_images: int, cfg, image_shape: tuple[int, ...], epochs: int | None = None
                 ) -> Views | None:
    """The training split's views, or None when ``views.count`` is 0 (the images as they are).
    With ``views.teacher: online``, a fresh view of every image in each of the ``epochs``
    (train_student.epochs): the teacher runs on every batch, so no view needs caching."""
    if cfg.count == 0:
        return None
    if cfg.teacher == "online":
        if epochs is None:
            raise ValueError("views.teacher = online: the students' views need train_student.epochs")
        per_epoch = cfg.model_copy(update={"count": epochs})
        return EpochViews(table(seed, count_images, per_epoch, image_shape), per_epoch)
    return Views(table(seed, count_images, cfg, image_shape), cfg)


def table(seed: int, count_images: int, cfg, image_shape: tuple[int, ...]) -> np.ndarray:
    """int32 [count_images, cfg.count, columns]: every view of every image, drawn by its kind,
    then the mix's columns (partner, ratio or box) when ``views.mix`` is set."""
    geometry = VIEW_KINDS[cfg.kind].draw(seed, count_images, cfg, tuple(image_shape))
    if cfg.mix == "none":
        return geometry
    if count_images < 2:
        raise KdflowError(f"views.mix = {cfg.mix}: needs at least 2 training images")
    shape = (count_images, cfg.count)
    # any other image, uniformly: draw from n - 1 and skip the image itself
    partner = uniform(seed, _PARTNER_STREAM, shape, 0, count_images - 1)
    partner += partner >= np.arange(count_images)[:, None]
    mix = MIXES[cfg.mix].draw(seed, shape, cfg, tuple(image_shape))
    return np.concatenate([geometry, partner[..., None], mix], axis=-1).astype(np.int32)


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


# ---- mixes: a view of two images (function matching) ----------------------------------------------

@dataclass(frozen=True)
class Mix:
    name: str
    columns: int  # the partner's index and this many - 1 of the mix's own
    # (seed, (images, views), views section, image shape) -> int32 [images, views, columns - 1]
    draw: Callable[[int, tuple[int, int], Any, tuple[int, ...]], np.ndarray] | None
    # (views, the partners' views, the mix's columns) -> the mixed views
    apply: Callable[[Any, Any, Any], Any] | None
    # (the mix's columns, image shape) -> float32 [b], the share of the image's own label
    weight: Callable[[Any, tuple[int, ...]], Any] | None


def beta(seed: int, shape: tuple[int, ...], concentration: float) -> np.ndarray:
    """float64 Beta(c, c) draws of the mix stream, as the ratio of two stateless gammas."""
    import tensorflow as tf

    gammas = tf.random.stateless_gamma((*shape, 2), seed=(seed, _MIX_STREAM), alpha=concentration).numpy()
    gammas = gammas.astype(np.float64)
    return gammas[..., 0] / np.maximum(gammas.sum(axis=-1), np.finfo(np.float64).tiny)


RATIO_SCALE = 1 << 16  # a mixup ratio is stored as an integer multiple of 2^-16: exact in float32


def draw_mixup(seed: int, shape: tuple[int, int], cfg, image_shape: tuple[int, ...]) -> np.ndarray:
    """The image's share of the mixture, max(b, 1 - b) for b ~ Beta(mix_alpha, mix_alpha) (Beyer
    et al.'s big_vision recipe: the image stays the larger part)."""
    b = beta(seed, shape, cfg.mix_alpha)
    return np.rint(np.maximum(b, 1.0 - b) * RATIO_SCALE).astype(np.int32)[..., None]


def apply_mixup(views, partner_views, mix):
    import tensorflow as tf

    ratio = tf.reshape(tf.cast(mix[:, 0], tf.float32) / RATIO_SCALE, [-1, 1, 1, 1])
    return ratio * views + (1.0 - ratio) * partner_views


def mixup_weight(mix, image_shape):
    import tensorflow as tf

    return tf.cast(mix[:, 0], tf.float32) / RATIO_SCALE


def draw_cutmix(seed: int, shape: tuple[int, int], cfg, image_shape: tuple[int, ...]) -> np.ndarray:
    """The box (y0, x0, h, w) of the partner pasted into the image (Yun et al. 2019): its area
    (1 - b) of the image for b ~ Beta(mix_alpha, mix_alpha), centred uniformly, clipped to the image."""
    height, width = image_shape[:2]
    side = np.sqrt(1.0 - beta(seed, shape, cfg.mix_alpha))
    centre = uniform(seed, _MIX_STREAM + 1, (*shape, 2), 0.0, 1.0, dtype="float32").astype(np.float64)
    boxes = []
    for axis, size in enumerate((height, width)):
        half, middle = np.rint(side * size) // 2, np.floor(centre[..., axis] * size)
        low, high = np.clip(middle - half, 0, size), np.clip(middle + half, 0, size)
        boxes.append((low, high - low))
    (y0, h), (x0, w) = boxes
    return np.stack([y0, x0, h, w], axis=-1).astype(np.int32)


def _box_mask(mix, height: int, width: int):
    import tensorflow as tf

    y, x = tf.range(height)[None, :], tf.range(width)[None, :]
    rows = (y >= mix[:, 0:1]) & (y < mix[:, 0:1] + mix[:, 2:3])
    cols = (x >= mix[:, 1:2]) & (x < mix[:, 1:2] + mix[:, 3:4])
    return rows[:, :, None, None] & cols[:, None, :, None]


def apply_cutmix(views, partner_views, mix):
    import tensorflow as tf

    return tf.where(_box_mask(mix, views.shape[1], views.shape[2]), partner_views, views)


def cutmix_weight(mix, image_shape):
    import tensorflow as tf

    height, width = image_shape[:2]
    return 1.0 - tf.cast(mix[:, 2] * mix[:, 3], tf.float32) / float(height * width)


MIXES: Registry[Mix] = Registry("mix", "views.mix", lambda mixes: {})
MIXES.add(Mix("none", 0, None, None, None))
MIXES.add(Mix("mixup", 2, draw_mixup, apply_mixup, mixup_weight))
MIXES.add(Mix("cutmix", 5, draw_cutmix, apply_cutmix, cutmix_weight))


# ---- the registry -------------------------------------------------------------------------------------

def _compose(kinds: Registry[ViewKind]) -> dict[str, type]:
    def check(self):
        why = kinds[self.kind].identity(self)
        if self.count > 0 and why and self.mix == "none":
            raise ValueError(f"count = {self.count} with {why}, or views.mix, or views.count: 0")
        return self

    section = flat_section(ViewsParams, kinds, "kind", check)
    mix = Literal[MIXES.names()]  # type: ignore[valid-type]
    default = ViewsParams.model_fields["mix"].default
    return {"views": compose_section("ViewsParams", (section,), {"mix": (mix, default)})}


VIEW_KINDS: Registry[ViewKind] = Registry("view kind", "views.kind", _compose)
VIEW_KINDS.add(ViewKind("shift", draw_shifts, apply_shifts, ShiftKnobs, _shift_identity))
VIEW_KINDS.add(ViewKind("crop", draw_crops, apply_crops, CropKnobs, _crop_identity))


def knobs(cfg) -> dict[str, Any]:
    """The keys of ``views`` that shape its views: the common ones and its kind's (for the report)."""
    kind = VIEW_KINDS[cfg.kind]
    own = tuple(kind.section.model_fields) if kind.section else ()
    mix = ("mix", "mix_alpha") if cfg.mix != "none" else ("mix",)
    return {f"views.{key}": getattr(cfg, key) for key in ("count", "kind", *own, "flip", *mix, "teacher")}
