"""Where training runs: TensorFlow's distribution strategies, chosen by ``runtime.strategy``.

Keras' ``fit`` does the distributed work itself once the model is built and compiled under a
strategy's scope: every global batch (``train_*.batch_size``) is split across the replicas,
each replica's loss is its per-sample sum divided by the *global* batch size (Keras' losses
scale by the number of replicas), and the gradients are summed across replicas, so one update
equals the single-device update up to float round-off.
"""

from __future__ import annotations

import contextlib
from typing import ContextManager

from kdflow.errors import KdflowError
from kdflow.params import RuntimeParams

_strategy = None  # the process's strategy once `setup` ran; None = TensorFlow's default


def setup(runtime: RuntimeParams):
    """Create the strategy for this process. Call it first, before any other TensorFlow work:
    logical devices can only be configured before TF starts."""
    global _strategy
    import tensorflow as tf

    if runtime.strategy == "default":
        _strategy = None
        return tf.distribute.get_strategy()
    if runtime.strategy == "mirrored":
        if not tf.config.list_physical_devices("GPU") and runtime.cpu_replicas > 1:
            cpu = tf.config.list_physical_devices("CPU")[0]
            tf.config.set_logical_device_configuration(
                cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(runtime.cpu_replicas)])
        devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
        _strategy = tf.distribute.MirroredStrategy([d.name for d in devices])
    else:
        raise KdflowError(MULTI_WORKER_BLOCKED)
    print(f"runtime: {runtime.strategy} strategy, {_strategy.num_replicas_in_sync} replicas on "
          f"{', '.join(d.name for d in devices)}", flush=True)
    return _strategy


# Keras 3's fit cannot train under MultiWorkerMirroredStrategy (TF 2.21 / Keras 3.15): its
# step reduces scalar logs with axis=0 across workers and fails, tensorflow/tensorflow#72388.
MULTI_WORKER_BLOCKED = (
    "runtime.strategy = multi_worker: not available with the pinned Keras 3.15 / TensorFlow 2.21, whose "
    "model.fit fails under MultiWorkerMirroredStrategy (tensorflow/tensorflow#72388); use `mirrored` "
    "(all GPUs or CPU devices of one host)")


def scope() -> ContextManager:
    """Build and compile models inside this, so Keras trains them with the strategy."""
    return _strategy.scope() if _strategy is not None else contextlib.nullcontext()
