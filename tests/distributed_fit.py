"""Helper run as a subprocess by test_scaleout.py: one small `kdflow.training.fit` under the
strategy named on the command line (a fresh process, because logical CPU devices and the
multi-worker runtime can only be set up before TensorFlow starts). Prints a JSON result."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from kdflow import distribute  # noqa: E402
from kdflow.params import ModelParams, RuntimeParams, TrainParams  # noqa: E402

strategy = distribute.setup(RuntimeParams(strategy=sys.argv[1], cpu_replicas=2))

import tensorflow as tf  # noqa: E402

from conftest import make_prepared  # noqa: E402
from kdflow import repro  # noqa: E402
from kdflow.losses import hard_ce, pack_targets  # noqa: E402
from kdflow.models import build_model  # noqa: E402
from kdflow.training import fit  # noqa: E402

traced_on = set()  # replica id of every trace of the loss (-1: outside a replica context)


def loss(targets, logits):
    context = tf.distribute.get_replica_context()
    replica = tf.get_static_value(context.replica_id_in_sync_group) if context else None
    traced_on.add(int(replica) if replica is not None else -1)
    return hard_ce(targets, logits)


data = make_prepared(n_per_class=40)
repro.make_deterministic(0)
with distribute.scope():
    model = build_model(ModelParams(arch="repo_student"), data.input_shape, data.num_classes, "student")
    summary = fit(model, (data.xy("train")[0], pack_targets(data.xy("train")[1])),
                  (data.xy("val")[0], pack_targets(data.xy("val")[1])),
                  TrainParams(epochs=3, batch_size=16, learning_rate=0.003, patience=None), loss, seed=0)
print("RESULT " + json.dumps({
    "replicas_in_sync": strategy.num_replicas_in_sync,
    "traced_on": sorted(traced_on),
    "summary": summary,
    "weights": [w.ravel().tolist() for w in model.get_weights()],
}))
