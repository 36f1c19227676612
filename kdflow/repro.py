"""Seeding and determinism, applied at the start of every stage that uses TensorFlow."""

from __future__ import annotations


def make_deterministic(seed: int) -> None:
    """Seed Python, NumPy and TF, and make TF ops deterministic (same machine => same bits)."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()
