"""One small training run of kdflow.training.loop under a distribution strategy, for test_scaleout.py: run as a
script (``python tests/distributed_fit.py <strategy>``, printing a JSON result) where the
strategy needs a fresh process (logical CPU devices and the cluster can only be set up before
TensorFlow starts; `multi_worker` reads TF_CONFIG), or called in-process (``fit_under("default")``).
Run with the project root and tests/ on PYTHONPATH."""

import json
import sys

from kdflow.core.params import RuntimeParams, TrainParams
from kdflow.schema import Schema
from kdflow.training import strategy as strategies


def fit_under(strategy_name: str) -> dict:
    strategies.setup(RuntimeParams(strategy=strategy_name, cpu_replicas=2))

    import keras
    import tensorflow as tf

    strategy = strategies.strategy()

    from conftest import make_prepared
    from kdflow.core.runner import deterministic
    from kdflow.models import families
    from kdflow.training.loop import Trainer
    from kdflow.training.objective import LABELS, TrainingModel

    traced_on = set()  # replica id of every trace of the loss (-1: outside a replica context)

    class TracedModel(TrainingModel):
        def compute_loss(self, *args, **kwargs):
            context = tf.distribute.get_replica_context()
            replica = tf.get_static_value(context.replica_id_in_sync_group) if context else None
            traced_on.add(int(replica) if replica is not None else -1)
            return super().compute_loss(*args, **kwargs)

    losses = []

    class EpochLosses(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            losses.append(logs["loss"])

    # 144 training images: 9 full batches of 16, so no step is dropped with several replicas.
    data = make_prepared(n_per_class=47)
    deterministic(0)
    with strategies.scope():
        student = Schema.checked({"student": {"arch": "repo_student"}}).student
        network = families.build(student, data.input_shape, data.num_classes, "student")
        model = TracedModel(network.inputs, network.outputs)
        schedule = TrainParams(epochs=3, batch_size=16, learning_rate=0.003, amsgrad=False, patience=None)
        summary = Trainer(model, schedule, len(data.xy("train")[1]), "train_student").fit_prepared(
            data, seed=0, callbacks=[EpochLosses()])
    return {
        "replicas_in_sync": strategy.num_replicas_in_sync,
        "traced_on": sorted(traced_on),
        "summary": summary,
        "losses": losses,
        "weights": [w.ravel().tolist() for w in network.get_weights()],
    }


if __name__ == "__main__":
    print("RESULT " + json.dumps(fit_under(sys.argv[1])))
