"""Model builders. Every model outputs logits; the softmax lives in the loss."""

from __future__ import annotations

import keras

from kdflow.params import ArchSpec, ModelParams, ResNetSpec


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


def build_resnet(spec: ResNetSpec, input_shape: tuple[int, ...], num_classes: int, name: str) -> keras.Model:
    """CIFAR-style ResNet: stem -> stages of basic blocks -> global average pool -> logits."""

    def conv_bn(h, filters, strides, label, relu=True):
        h = keras.layers.Conv2D(filters, 3, strides=strides, padding="same", use_bias=False,
                                kernel_initializer="he_normal", name=f"{label}_conv")(h)
        h = keras.layers.BatchNormalization(name=f"{label}_bn")(h)
        return keras.layers.ReLU(name=f"{label}_relu")(h) if relu else h

    inputs = keras.Input(shape=input_shape, name="image")
    h = conv_bn(inputs, max(1, round(spec.base_filters * spec.width)), 1, "stem")
    for stage, blocks in enumerate(spec.blocks_per_stage):
        filters = max(1, round(spec.base_filters * spec.width * 2**stage))
        for block in range(blocks):
            label = f"stage{stage}_block{block}"
            strides = 2 if stage > 0 and block == 0 else 1
            shortcut = h
            if strides != 1 or h.shape[-1] != filters:  # projection shortcut where the shape changes
                shortcut = keras.layers.Conv2D(filters, 1, strides=strides, use_bias=False,
                                               name=f"{label}_proj")(h)
            h = conv_bn(h, filters, strides, f"{label}_a")
            h = conv_bn(h, filters, 1, f"{label}_b", relu=False)
            h = keras.layers.ReLU(name=f"{label}_out")(keras.layers.Add(name=f"{label}_add")([h, shortcut]))
    h = keras.layers.GlobalAveragePooling2D(name="pool")(h)
    if spec.dropout > 0:
        h = keras.layers.Dropout(spec.dropout, name="dropout")(h)
    logits = keras.layers.Dense(num_classes, name="logits")(h)
    return keras.Model(inputs, logits, name=name)


def build_model(cfg: ModelParams, input_shape: tuple[int, ...], num_classes: int, name: str) -> keras.Model:
    """Build the architecture named by ``cfg`` (a preset, a spec or a resnet) for the prepared data."""
    spec = cfg.resolved_spec()
    builder = build_resnet if isinstance(spec, ResNetSpec) else build_from_spec
    return builder(spec, tuple(input_shape), int(num_classes), name)
