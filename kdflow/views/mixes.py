"""The mixes and their registry ``MIXES``: a view of two training images (``views.mix``, Beyer et
al. 2022's function matching).

A mixed view's row of the table ends with the mix's columns: the partner image's index, then the
ratio (mixup) or the box (cutmix), drawn statelessly like the rest. Each of the two images is
first put in its own geometric view (the partner in its row of the same view column), then the
two are mixed; the scratch students learn the mixed labels (``weight``: the share of the image's
own label). Adding a mix: its draw, apply and weight, and one ``MIXES`` line.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from kdflow.views.draws import MIX, beta, uniform


@dataclass(frozen=True)
class Mix:
    columns: int  # the partner's index and this many - 1 of the mix's own
    # (seed, (images, views), views section, image shape) -> int32 [images, views, columns - 1]
    draw: Callable[[int, tuple[int, int], Any, tuple[int, ...]], np.ndarray] | None
    # (views, the partners' views, the mix's columns) -> the mixed views
    apply: Callable[[Any, Any, Any], Any] | None
    # (the mix's columns, image shape) -> float32 [b], the share of the image's own label
    weight: Callable[[Any, tuple[int, ...]], Any] | None


RATIO_SCALE = 1 << 16  # a mixup ratio is stored as an integer multiple of 2^-16: exact in float32


def draw_mixup(seed: int, shape: tuple[int, int], views, image_shape: tuple[int, ...]) -> np.ndarray:
    """The image's share of the mixture, max(b, 1 - b) for b ~ Beta(mix_alpha, mix_alpha) (Beyer
    et al.'s big_vision recipe: the image stays the larger part)."""
    b = beta(seed, shape, views.mix_alpha)
    return np.rint(np.maximum(b, 1.0 - b) * RATIO_SCALE).astype(np.int32)[..., None]


def apply_mixup(views, partner_views, mix):
    import tensorflow as tf

    ratio = tf.reshape(tf.cast(mix[:, 0], tf.float32) / RATIO_SCALE, [-1, 1, 1, 1])
    return ratio * views + (1.0 - ratio) * partner_views


def mixup_weight(mix, image_shape):
    import tensorflow as tf

    return tf.cast(mix[:, 0], tf.float32) / RATIO_SCALE


def draw_cutmix(seed: int, shape: tuple[int, int], views, image_shape: tuple[int, ...]) -> np.ndarray:
    """The box (y0, x0, h, w) of the partner pasted into the image (Yun et al. 2019): its area
    (1 - b) of the image for b ~ Beta(mix_alpha, mix_alpha), centred uniformly, clipped to the image."""
    height, width = image_shape[:2]
    side = np.sqrt(1.0 - beta(seed, shape, views.mix_alpha))
    centre = uniform(seed, MIX + 1, (*shape, 2), 0.0, 1.0, dtype="float32").astype(np.float64)
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


MIXES: dict[str, Mix] = {
    "none": Mix(0, None, None, None),
    "mixup": Mix(2, draw_mixup, apply_mixup, mixup_weight),
    "cutmix": Mix(5, draw_cutmix, apply_cutmix, cutmix_weight),
}
