"""The view table of a training split and the views built from it, shared by the teacher's cache
and both students.

The table holds one row of integers per (image, view), drawn by the view kind and, for a mixed
view, the mix (kdflow.views.kinds, kdflow.views.mixes). It is a pure function of the seed and the
params, so `soft_targets` (which caches the teacher's outputs for every view) and the student
stages (which rebuild the views on the fly) derive the same table, and the kind builds the same
pixels on both sides. In epoch e, sample i of a student sees view ``choice(seed, e)[i]``, also a
pure function, so the distilled and the scratch student of one repeat see identical view
sequences (FKD, Shen & Xing 2022; Beyer et al. 2022: the teacher's output for the very view the
student sees).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kdflow.core import KdflowError
from kdflow.views.draws import CHOICE, PARTNER, uniform
from kdflow.views.kinds import VIEW_KINDS
from kdflow.views.mixes import MIXES
from kdflow.views.params import ViewsParams

TEACHER_CROP_STREAM = 0x7463  # added to the seed for the teacher's crops (not the students' views)


@dataclass(frozen=True)
class Views:
    """The views of a training split: ``table`` [images, views, columns] of the views ``params``."""

    table: np.ndarray
    params: ViewsParams

    @property
    def count(self) -> int:
        return self.table.shape[1]

    @property
    def mixed(self) -> bool:
        return self.params.mix != "none"

    def partners(self, rows):
        """The partner image of each row's mixture (int32 [b]); only when ``mixed``."""
        return rows[..., -MIXES[self.params.mix].columns]

    def apply(self, images, rows, partner_images=None, partner_rows=None):
        """The views of a batch of images, given their rows of the table; a mixture needs the
        partner images (``partners(rows)``) and their rows of the same view column."""
        import tensorflow as tf

        kind = VIEW_KINDS[self.params.kind]
        rows = tf.cast(rows, tf.int32)
        views = kind.apply(tf.convert_to_tensor(images), rows, self.params)
        if not self.mixed:
            return views
        partner_views = kind.apply(tf.convert_to_tensor(partner_images), tf.cast(partner_rows, tf.int32), self.params)
        mix = MIXES[self.params.mix]
        return mix.apply(views, partner_views, rows[:, -mix.columns + 1:])

    def label_weight(self, rows, image_shape):
        """float32 [b]: the share of each mixed view's own label (the rest is its partner's)."""
        import tensorflow as tf

        mix = MIXES[self.params.mix]
        return mix.weight(tf.cast(rows, tf.int32)[:, -mix.columns + 1:], image_shape)

    def choice(self, seed, epoch, count_images: int):
        """The view each of ``count_images`` images is seen in during ``epoch`` (see ``choice``)."""
        return choice(seed, epoch, count_images, self.count)


@dataclass(frozen=True)
class EpochViews(Views):
    """A new view of every image in each epoch: view e of the table is epoch e's (the teacher's
    random-resized crops, train_teacher.augment.crop_scale; the online teacher's fresh views).
    ``after(k)``: the same views for a run whose epoch 0 is epoch k (fine-tuning after the frozen
    epochs)."""

    offset: int = 0

    def after(self, epochs: int) -> "EpochViews":
        return EpochViews(self.table, self.params, self.offset + epochs)

    def choice(self, seed, epoch, count_images: int):
        import tensorflow as tf

        return tf.fill([count_images], tf.cast(epoch, tf.int32) + self.offset)


def for_training(seed: int, count_images: int, params: ViewsParams, image_shape: tuple[int, ...],
                 epochs: int | None = None) -> Views | None:
    """The training split's views, or None when ``views.count`` is 0 (the images as they are).
    With ``views.teacher: online``, a fresh view of every image in each of the ``epochs``
    (train_student.epochs): the teacher runs on every batch, so no view needs caching."""
    if params.count == 0:
        return None
    if params.teacher == "online":
        if epochs is None:
            raise ValueError("views.teacher = online: the students' views need train_student.epochs")
        per_epoch = params.model_copy(update={"count": epochs})
        return EpochViews(table(seed, count_images, per_epoch, image_shape), per_epoch)
    return Views(table(seed, count_images, params, image_shape), params)


def teacher_crops(seed: int, count_images: int, scale: list[float], flip: bool, epochs: int,
                  image_shape: tuple[int, ...]) -> EpochViews:
    """One random-resized crop (the crop kind) of every image per epoch, for the teacher
    (train_teacher.augment.crop_scale), from a stream of its own."""
    # not validated: views.count's bound is for cached views, and the crop's keys were validated
    # as train_teacher.augment's
    params = ViewsParams.model_construct(count=epochs, kind="crop", scale=scale, flip=flip)
    return EpochViews(table(seed + TEACHER_CROP_STREAM, count_images, params, image_shape), params)


def table(seed: int, count_images: int, params: ViewsParams, image_shape: tuple[int, ...]) -> np.ndarray:
    """int32 [count_images, params.count, columns]: every view of every image, drawn by its kind,
    then the mix's columns (partner, ratio or box) when ``views.mix`` is set."""
    geometry = VIEW_KINDS[params.kind].draw(seed, count_images, params, tuple(image_shape))
    if params.mix == "none":
        return geometry
    if count_images < 2:
        raise KdflowError(f"views.mix = {params.mix}: needs at least 2 training images")
    shape = (count_images, params.count)
    # any other image, uniformly: draw from n - 1 and skip the image itself
    partner = uniform(seed, PARTNER, shape, 0, count_images - 1)
    partner += partner >= np.arange(count_images)[:, None]
    mix = MIXES[params.mix].draw(seed, shape, params, tuple(image_shape))
    return np.concatenate([geometry, partner[..., None], mix], axis=-1).astype(np.int32)


def choice(seed, epoch, count_images: int, count_views: int):
    """int32 [count_images]: the view each image is seen in during ``epoch`` (pure function of
    (seed, epoch, image index))."""
    import tensorflow as tf

    pair = tf.stack([tf.cast(seed, tf.int64), tf.cast(epoch, tf.int64)])
    pair = tf.random.experimental.stateless_fold_in(pair, CHOICE)
    return tf.random.stateless_uniform((count_images,), seed=pair, minval=0, maxval=count_views,
                                       dtype=tf.int32)
