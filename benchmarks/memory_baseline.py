"""``python -m benchmarks.memory_baseline [teacher|student]``, run in a prepared project: the
imports every stage makes (the TensorFlow baseline a stage's peak memory is compared with), and
with a role, the prepared data and one plain `model.fit` of that model on it, with the stage's batch
size and a validation pass: what Keras itself needs to hold this data and train this model."""

import sys

import dvclive  # noqa: F401
import keras
import numpy as np
import scipy  # noqa: F401
import sklearn  # noqa: F401
import tensorflow  # noqa: F401

from kdflow.evaluate import comparison, report  # noqa: F401
from kdflow.teacher import train  # noqa: F401
from kdflow.training import students  # noqa: F401
from kdflow.views import cache  # noqa: F401

if len(sys.argv) > 1:
    from kdflow.core.prepared import load_prepared
    from kdflow.models import families
    from kdflow.schema import Schema

    role = sys.argv[1]
    data = load_prepared(("train", "val", "test"))
    params = Schema.load()
    schedule = params.train_teacher if role == "teacher" else params.train_student
    model = families.build(getattr(params, role), data.input_shape, data.num_classes, "m")
    model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    (x, y), (x_val, y_val) = data.xy("train"), data.xy("val")
    model.fit(np.asarray(x), y, batch_size=schedule.batch_size, epochs=2, validation_data=(np.asarray(x_val), y_val),
              verbose=0)
