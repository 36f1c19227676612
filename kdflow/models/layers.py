"""The Keras layers of an imported teacher's wrapper that Keras has no layer for: its outputs
made logits in the data's class order, and a SavedModel graph carried inside the ``.keras`` file;
and the layer that makes an ensemble of teachers one teacher.

They are registered with Keras (package ``kdflow``), so ``models/teacher.keras`` loads with
safe_mode on wherever this module is imported (kdflow.models.files imports it before loading).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import keras
import numpy as np

# log(0) is -inf; a float32 probability that underflowed to 0 becomes the log of the smallest
# normal float32 (-87.3), far below any class that carries mass.
_TINY = float(np.finfo(np.float32).tiny)


@keras.saving.register_keras_serializable(package="kdflow")
class TeacherOutputs(keras.layers.Layer):
    """The teacher's outputs as logits of the data's classes, in the data's order: probabilities
    become log-probabilities (logits up to a constant per row, so softmax and every KD loss are
    unchanged), and output ``order[j]`` becomes column ``j``. A teacher with classes the data does
    not have keeps the data's (``order`` names fewer outputs than it has), ``renormalise``d: a
    log-softmax over the kept columns, the log of its distribution conditioned on them."""

    def __init__(self, probabilities: bool = False, order: list[int] | None = None, renormalise: bool = False,
                 **kwargs):
        super().__init__(**kwargs)
        self.probabilities = bool(probabilities)
        self.order = None if order is None else [int(i) for i in order]
        self.renormalise = bool(renormalise)

    def call(self, outputs):
        outputs = keras.ops.cast(outputs, "float32")
        if self.probabilities:
            outputs = keras.ops.log(keras.ops.maximum(outputs, _TINY))
        if self.order is not None:
            outputs = keras.ops.take(outputs, self.order, axis=-1)
        if self.renormalise:
            outputs = keras.ops.log_softmax(outputs, axis=-1)
        return outputs

    def compute_output_shape(self, input_shape):
        return input_shape if self.order is None else (*input_shape[:-1], len(self.order))

    def get_config(self):
        return {**super().get_config(), "probabilities": self.probabilities, "order": self.order,
                "renormalise": self.renormalise}


@keras.saving.register_keras_serializable(package="kdflow")
class SavedModelTeacher(keras.layers.Layer):
    """One signature of a TensorFlow SavedModel as a layer: a graph, no Python code.

    Unlike keras.layers.TFSMLayer, whose config points at a directory outside the file (and
    which safe_mode refuses to load), the SavedModel travels inside the ``.keras`` archive as
    the layer's assets, so the teacher file is whole and loads anywhere with safe_mode on."""

    def __init__(self, signature: str, input_key: str, output_key: str, feed_dtype: str, width: int,
                 source: str | None = None, **kwargs):
        kwargs["trainable"] = False  # a fixed graph: nothing in it trains
        super().__init__(**kwargs)
        self.signature, self.input_key, self.output_key = signature, input_key, output_key
        self.feed_dtype, self.width = feed_dtype, int(width)
        self._source = None
        self._function = None
        if source is not None:
            self._load(Path(source))
        self.built = True

    def _load(self, folder: Path) -> None:
        import tensorflow as tf

        self._source = folder
        self._loaded = tf.saved_model.load(str(folder))
        self._function = self._loaded.signatures[self.signature]

    def call(self, images):
        if self._function is None:
            raise RuntimeError("SavedModelTeacher called before its SavedModel was loaded")
        if "int" in self.feed_dtype:  # e.g. uint8 pixels: round, do not truncate
            images = keras.ops.round(images)
        outputs = self._function(**{self.input_key: keras.ops.cast(images, self.feed_dtype)})
        return keras.ops.cast(outputs[self.output_key], "float32")

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.width)

    def save_assets(self, dir_path):
        shutil.copytree(self._source, Path(dir_path), dirs_exist_ok=True)

    def load_assets(self, dir_path):
        self._load(Path(dir_path))

    def get_config(self):
        return {**super().get_config(), "signature": self.signature, "input_key": self.input_key,
                "output_key": self.output_key, "feed_dtype": self.feed_dtype, "width": self.width}


@keras.saving.register_keras_serializable(package="kdflow")
class EnsembleLogits(keras.layers.Layer):
    """The members' logits as one teacher's: with ``average`` "probabilities", the log of their
    mean probabilities (Hinton et al. 2015's ensemble target; softmax gives back that mean);
    with "logits", their mean logits (a geometric mean of the distributions)."""

    def __init__(self, average: str = "probabilities", **kwargs):
        super().__init__(**kwargs)
        if average not in ("probabilities", "logits"):
            raise ValueError(f"average = {average!r}: probabilities | logits")
        self.average = average

    def call(self, members):
        stacked = keras.ops.stack([keras.ops.cast(m, "float32") for m in members], axis=0)
        if self.average == "logits":
            return keras.ops.mean(stacked, axis=0)
        log_probabilities = keras.ops.log_softmax(stacked, axis=-1)
        return keras.ops.logsumexp(log_probabilities, axis=0) - float(np.log(len(members)))

    def compute_output_shape(self, input_shape):
        return input_shape[0]

    def get_config(self):
        return {**super().get_config(), "average": self.average}


def ensemble_members(teacher: keras.Model) -> list[keras.Model]:
    """The members of an ensemble teacher (kdflow.teacher.ensemble), in order; [teacher] for one."""
    if not teacher.layers or not isinstance(teacher.layers[-1], EnsembleLogits):
        return [teacher]
    return [layer for layer in teacher.layers if isinstance(layer, keras.Model)]


def one_teacher(teacher: keras.Model, why: str) -> None:
    """Refuse an ensemble where the students' stage would run the teacher (``why``: what runs it)."""
    from kdflow.core import KdflowError

    count = len(ensemble_members(teacher))
    if count > 1:
        raise KdflowError(f"{why} runs the teacher in the students' stage, and it is an ensemble of {count}: "
                          "that takes one teacher (an ensemble's cost stays in soft_targets)")
