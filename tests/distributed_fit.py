"""Helper run as a subprocess by test_scaleout.py: one small `kdflow.training.fit` under the
strategy named on the command line (a fresh process: logical CPU devices and the cluster can
only be set up before TensorFlow starts; `multi_worker` reads TF_CONFIG). Prints a JSON
result. Run with the project root and tests/ on PYTHONPATH."""

import json
import sys

from kdflow import distribute
from kdflow.params import ModelParams, RuntimeParams, TrainParams

strategy = distribute.setup(RuntimeParams(strategy=sys.argv[1], cpu_replicas=2))

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from conftest import make_prepared  # noqa: E402
from kdflow import repro  # noqa: E402
from kdflow.models import build_model  # noqa: E402
from kdflow.objective import LABELS, TrainingModel  # noqa: E402
from kdflow.training import fit  # noqa: E402

traced_on = set()  # replica id of every trace of the loss (-1: outside a replica context)


class TracedModel(TrainingModel):
    def compute_loss(self, *args, **kwargs):
        context = tf.distribute.get_replica_context()
        replica = tf.get_static_value(context.replica_id_in_sync_group) if context else None
        traced_on.add(int(replica) if replica is not None else -1)
        return super().compute_loss(*args, **kwargs)


class EpochLosses(keras.callbacks.Callback):
    losses: list = []

    def on_epoch_end(self, epoch, logs=None):
        self.losses.append(logs["loss"])


# 144 training images: 9 full batches of 16, so no step is dropped with several replicas.
data = make_prepared(n_per_class=47)
repro.make_deterministic(0)
with distribute.scope():
    network = build_model(ModelParams(arch="repo_student"), data.input_shape, data.num_classes, "student")
    model = TracedModel(network.inputs, network.outputs)
    summary = fit(model, (data.xy("train")[0], {LABELS: data.xy("train")[1]}),
                  (data.xy("val")[0], {LABELS: data.xy("val")[1]}),
                  TrainParams(epochs=3, batch_size=16, learning_rate=0.003, amsgrad=False, patience=None), seed=0,
                  extra_callbacks=[EpochLosses()])
print("RESULT " + json.dumps({
    "replicas_in_sync": strategy.num_replicas_in_sync,
    "traced_on": sorted(traced_on),
    "summary": summary,
    "losses": EpochLosses.losses,
    "weights": [w.ravel().tolist() for w in network.get_weights()],
}))
