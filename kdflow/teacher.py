"""The `train_teacher` stage's work: train the teacher on the labels, or import the user's.

Only the teacher's own params reach here (teacher, train_teacher, the seed): nothing the
students or the distillation methods read, so editing those never retrains the teacher.
"""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
from scipy.special import log_softmax

from kdflow import architectures, distribute, repro, tracking
from kdflow.artifacts import load_user_model
from kdflow.data import Prepared
from kdflow.errors import KdflowError
from kdflow.inference import predict_logits
from kdflow.objective import Objective, training_model
from kdflow.params import AugmentParams, TeacherTrainParams
from kdflow.training import fit_prepared


def train(cfg, train_cfg: TeacherTrainParams, seed: int, data: Prepared, log_dir: Path | None = None,
          run_dir: Path | None = None) -> tuple[keras.Model, dict]:
    """Train the teacher ``cfg`` (the validated ``teacher`` section) on the hard labels;
    per-epoch curves go to ``log_dir`` if given, and with ``run_dir`` the training resumes
    from the checkpoint kept there."""
    repro.make_deterministic(seed)
    callbacks = [tracking.epoch_logger(log_dir)] if log_dir is not None else []
    with distribute.scope():
        model = architectures.build(cfg, data.input_shape, data.num_classes, name="teacher")
        goal = Objective(label_smoothing=train_cfg.label_smoothing)
        trained = training_model(with_augmentation(model, train_cfg.augment, seed), goal)
        summary = fit_prepared(trained, data, train_cfg, "train_teacher", seed, callbacks=callbacks,
                               checkpoint=run_dir / "teacher.npz" if run_dir is not None else None)
    return model, summary


def import_file(cfg, seed: int, data: Prepared) -> tuple[keras.Model, dict]:
    """The user's teacher (teacher.source: file, ``cfg`` the ``teacher`` section), checked
    against the prepared data, as a logits model; its summary holds its validation accuracy
    and cross-entropy."""
    repro.make_deterministic(seed)
    model = load_user_model(cfg.path, key="teacher.path", safe_mode=cfg.safe_mode)
    where = f"teacher.path = {cfg.path}"
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise KdflowError(f"{where}: the model must have one input and one output")
    if tuple(model.input_shape[1:]) != tuple(data.input_shape):
        raise KdflowError(f"{where}: its input shape {tuple(model.input_shape[1:])} does not match the "
                          f"prepared data {tuple(data.input_shape)} (data.name/image_size/color_mode)")
    if model.output_shape[1:] != (data.num_classes,):
        raise KdflowError(f"{where}: it outputs shape {tuple(model.output_shape[1:])}, but the prepared "
                          f"data has {data.num_classes} classes")
    model = _as_logits(model)
    x, y = data.xy("val")
    logits = predict_logits(model, x)
    return model, {"epochs_run": 0, "val_accuracy": round(float(np.mean(logits.argmax(axis=1) == y)), 6),
                   "val_hard_ce": round(float(-log_softmax(logits, axis=1)[np.arange(len(y)), y].mean()), 6)}


def _as_logits(model: keras.Model) -> keras.Model:
    """Drop a final softmax (many user models end with one): the pipeline works on logits.
    Rebuilt from the config, so no Lambda layer is added and the result stays safe to load."""
    last = model.layers[-1]
    if getattr(last, "activation", None) is not keras.activations.softmax:
        return model
    config = model.get_config()
    for layer in config["layers"]:
        if layer["config"]["name"] == last.name:
            layer["config"]["activation"] = "linear"
    rebuilt = keras.Model.from_config(config)
    rebuilt.set_weights(model.get_weights())
    print(f"train_teacher: removed the final softmax of layer '{last.name}' (the pipeline uses logits)")
    return rebuilt


def with_augmentation(model: keras.Model, augment: AugmentParams, seed: int) -> keras.Model:
    """``model`` behind Keras' random augmentation layers (active only while training; the
    saved model is ``model`` itself). Returns ``model`` unchanged when augmentation is off."""
    if not augment.enabled:
        return model
    height, width = model.input_shape[1:3]
    layers = []
    if augment.crop:
        # Pad-by-N-then-random-crop is a zero-filled random shift of up to N whole pixels; done
        # as one translation layer because Keras' RandomCrop does not restore the size at inference.
        layers.append(keras.layers.RandomTranslation(augment.crop / height, augment.crop / width,
                                                     fill_mode="constant", interpolation="nearest",
                                                     seed=seed, name="augment_crop"))
    if augment.shift:
        layers.append(keras.layers.RandomTranslation(augment.shift, augment.shift, fill_mode="constant",
                                                     seed=seed + 1, name="augment_shift"))
    if augment.flip:
        layers.append(keras.layers.RandomFlip("horizontal", seed=seed + 2, name="augment_flip"))
    inputs = keras.Input(shape=model.input_shape[1:], name="image")
    h = inputs
    for layer in layers:
        h = layer(h)
    return keras.Model(inputs, model(h), name=f"{model.name}_augmented")
