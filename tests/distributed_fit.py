"""One small `kdflow.training.fit` under a distribution strategy, for test_scaleout.py: run as a
script (``python tests/distributed_fit.py <strategy>``, printing a JSON result) where the
strategy needs a fresh process (logical CPU devices and the cluster can only be set up before
TensorFlow starts; `multi_worker` reads TF_CONFIG), or called in-process (``fit_under("default")``).
Run with the project root and tests/ on PYTHONPATH."""

import json
import sys

from kdflow import distribute
from kdflow.extensions import validate_all
from kdflow.params import RuntimeParams, TrainParams


def fit_under(strategy_name: str) -> dict:
    distribute.setup(RuntimeParams(strategy=strategy_name, cpu_replicas=2))

    import keras
    import tensorflow as tf

    strategy = distribute.strategy()

    from conftest import make_prepared
    from kdflow import architectures, repro
    from kdflow.objective import LABELS, TrainingModel
    from kdflow.training import fit

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
    repro.make_deterministic(0)
    with distribute.scope():
        student = validate_all({"student": {"arch": "repo_student"}}).student
        network = architectures.build(student, data.input_shape, data.num_classes, "student")
        model = TracedModel(network.inputs, network.outputs)
        summary = fit(model, (data.xy("train")[0], {LABELS: data.xy("train")[1]}),
                      (data.xy("val")[0], {LABELS: data.xy("val")[1]}),
                      TrainParams(epochs=3, batch_size=16, learning_rate=0.003, amsgrad=False, patience=None), seed=0,
                      extra_callbacks=[EpochLosses()])
    return {
        "replicas_in_sync": strategy.num_replicas_in_sync,
        "traced_on": sorted(traced_on),
        "summary": summary,
        "losses": losses,
        "weights": [w.ravel().tolist() for w in network.get_weights()],
    }


if __name__ == "__main__":
    print("RESULT " + json.dumps(fit_under(sys.argv[1])))
