"""Stateless random draws of the seed's streams, with TensorFlow's stateless random ops: a view's
row of the table is a pure function of (seed, image, view), the same wherever it is drawn."""

from __future__ import annotations

import numpy as np

# Stream ids folded into the seed, so the view table, its flips, the per-epoch choice, the mixes'
# partners and ratios draw numbers independent of each other and of the other uses of the seed
# (data order, initial weights).
TABLE, FLIP, CHOICE, PARTNER, MIX = 0x7669, 0x666C, 0x6368, 0x7061, 0x6D78


def uniform(seed: int, stream: int, shape: tuple[int, ...], minval, maxval, dtype="int32") -> np.ndarray:
    """Stateless uniform draws of one stream of the seed, filled in row-major order (so the rows
    of the first n images do not depend on how many images there are)."""
    import tensorflow as tf

    return tf.random.stateless_uniform(shape, seed=(seed, stream), minval=minval, maxval=maxval,
                                       dtype=getattr(tf, dtype)).numpy()


def flips(seed: int, shape: tuple[int, ...], flip: bool) -> np.ndarray:
    """int32 [*shape, 1]: 1 where a view is flipped horizontally (never without ``flip``)."""
    return uniform(seed, FLIP, (*shape, 1), 0, 2 if flip else 1)


def beta(seed: int, shape: tuple[int, ...], concentration: float) -> np.ndarray:
    """float64 Beta(c, c) draws of the mix stream, as the ratio of two stateless gammas."""
    import tensorflow as tf

    gammas = tf.random.stateless_gamma((*shape, 2), seed=(seed, MIX), alpha=concentration).numpy()
    gammas = gammas.astype(np.float64)
    return gammas[..., 0] / np.maximum(gammas.sum(axis=-1), np.finfo(np.float64).tiny)
