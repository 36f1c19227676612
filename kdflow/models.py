"""Model builders. Every model outputs logits; the softmax lives in the loss."""

from __future__ import annotations

import keras

from kdflow.params import ArchSpec, ModelParams


def build_from_spec(spec: ArchSpec, input_shape: tuple[int, ...], num_classes: int, name: str) -> keras.Model:
    """conv blocks -> flatten -> dense blocks -> Dense(num_classes) logits."""
    inputs = keras.Input(shape=input_shape, name="image")
    h = inputs
    for i, filters in enumerate(spec.conv_filters):
        h = keras.layers.Conv2D(filters, spec.kernel_size, use_bias=not spec.batch_norm, name=f"conv{i}")(h)
        if spec.batch_norm:
            h = keras.layers.BatchNormalization(name=f"bn{i}")(h)
        h = keras.layers.ReLU(name=f"relu{i}")(h)
        if spec.pool_size > 1:
            h = keras.layers.MaxPooling2D(spec.pool_size, name=f"pool{i}")(h)
    h = keras.layers.Flatten(name="flatten")(h)
    for i, units in enumerate(spec.dense_units):
        h = keras.layers.Dense(units, activation="relu", name=f"dense{i}")(h)
        if spec.dropout > 0:
            h = keras.layers.Dropout(spec.dropout, name=f"dropout{i}")(h)
    if spec.dropout > 0 and not spec.dense_units:
        h = keras.layers.Dropout(spec.dropout, name="dropout")(h)
    logits = keras.layers.Dense(num_classes, name="logits")(h)
    return keras.Model(inputs, logits, name=name)


def build_model(cfg: ModelParams, input_shape: tuple[int, ...], num_classes: int, name: str) -> keras.Model:
    """Build the architecture named by ``cfg`` (a preset or a spec) for the prepared data."""
    return build_from_spec(cfg.resolved_spec(), tuple(input_shape), int(num_classes), name)
