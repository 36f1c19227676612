"""Augmented views of the training images, shared by the teacher's cache and both students.

A view of image i is a whole-pixel shift (zero fill) and, if enabled, a horizontal flip. Its
parameters are a pure function of (seed, i, view index), drawn with TensorFlow's stateless
random ops, so `soft_targets` (which caches the teacher's outputs for every view) and the
student stages (which rebuild the views on the fly) derive the same table from the params,
and ``apply`` builds the same pixels on both sides. In epoch e, sample i of a student sees
view ``choice(seed, e)[i]``, also a pure function, so the distilled and the scratch student of
one repeat see identical view sequences (FKD, Shen & Xing 2022; Beyer et al. 2022: the
teacher's output for the very view the student sees).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from kdflow.errors import KdflowError
from kdflow.params import ViewsParams

# Stream ids folded into the seed, so the view table and the per-epoch choice draw numbers
# independent of each other and of the other uses of the seed (data order, initial weights).
_TABLE_STREAM, _FLIP_STREAM, _CHOICE_STREAM = 0x7669, 0x666C, 0x6368
DY, DX, FLIP = 0, 1, 2  # the columns of a view's parameters


@dataclass(frozen=True)
class Views:
    """The views of a training split: ``table`` [images, views, 3] and the largest shift."""

    table: np.ndarray
    max_shift: int

    @property
    def count(self) -> int:
        return self.table.shape[1]


def for_training(seed: int, count_images: int, cfg: ViewsParams, image_shape: tuple[int, ...]) -> Views | None:
    """The training split's views, or None when ``views.count`` is 0 (the images as they are)."""
    if cfg.count == 0:
        return None
    return Views(table(seed, count_images, cfg, image_shape), cfg.shift)


def table(seed: int, count_images: int, cfg: ViewsParams, image_shape: tuple[int, ...]) -> np.ndarray:
    """int32 [count_images, cfg.count, 3]: (dy, dx, flip) of every view of every image. Row i
    depends only on (seed, i, view index): stateless draws fill the table in row-major order."""
    height, width = image_shape[:2]
    if 2 * cfg.shift >= min(height, width):
        raise KdflowError(f"views.shift = {cfg.shift}: must be less than half the image size "
                          f"({height}x{width})")
    shape = (count_images, cfg.count)
    shifts = tf.random.stateless_uniform((*shape, 2), seed=(seed, _TABLE_STREAM), minval=-cfg.shift,
                                         maxval=cfg.shift + 1, dtype=tf.int32)
    flips = tf.random.stateless_uniform((*shape, 1), seed=(seed, _FLIP_STREAM), minval=0,
                                        maxval=2 if cfg.flip else 1, dtype=tf.int32)
    return tf.concat([shifts, flips], axis=-1).numpy()


def choice(seed: int | tf.Tensor, epoch: int | tf.Tensor, count_images: int, count_views: int) -> tf.Tensor:
    """int32 [count_images]: the view each image is seen in during ``epoch`` (pure function of
    (seed, epoch, image index))."""
    pair = tf.stack([tf.cast(seed, tf.int64), tf.cast(epoch, tf.int64)])
    pair = tf.random.experimental.stateless_fold_in(pair, _CHOICE_STREAM)
    return tf.random.stateless_uniform((count_images,), seed=pair, minval=0, maxval=count_views,
                                       dtype=tf.int32)


def apply(images: tf.Tensor, params: tf.Tensor, max_shift: int) -> tf.Tensor:
    """The views of a batch: images [b, H, W, C] and params [b, 3] (dy, dx, flip). Pure
    indexing into the zero-padded batch (no interpolation), so it is exact and deterministic."""
    images = tf.convert_to_tensor(images)
    height, width = images.shape[1], images.shape[2]
    padded = tf.pad(images, [[0, 0], [max_shift, max_shift], [max_shift, max_shift], [0, 0]])
    params = tf.cast(params, tf.int32)
    rows = tf.range(height)[None, :] - params[:, DY:DY + 1] + max_shift
    cols = tf.range(width)[None, :]
    flip = params[:, FLIP:FLIP + 1]
    # shift after flip: output column x shows input column (W-1-x)+dx if flipped, x-dx if not
    cols = tf.where(flip == 1, width - 1 - cols + params[:, DX:DX + 1], cols - params[:, DX:DX + 1]) + max_shift
    return tf.gather(tf.gather(padded, rows, axis=1, batch_dims=1), cols, axis=2, batch_dims=1)

