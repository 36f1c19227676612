"""Where training runs: TensorFlow's distribution strategies, chosen by ``runtime.strategy``.

``kdflow.training.loop`` runs the same step under every strategy: each global batch
(``train_*.batch_size``) is split evenly across the replicas, each replica's loss is its
per-sample sum divided by the *global* batch size, and the optimizer sums the replicas'
gradients, so one update equals the single-device update up to float round-off.

With ``multi_worker``, every worker process runs the same stage; ``TF_CONFIG`` names the
cluster and this process's place in it (docs/scale-out.md). Only the chief writes the stage's
outputs, curves and checkpoints: the other workers' writes go to a private temp folder
(``kdflow.core.io.discard_writes``).
"""

from __future__ import annotations

import contextlib
import json
import os
from typing import ContextManager

from kdflow.core import KdflowError
from kdflow.core.io import discard_writes
from kdflow.core.params import RuntimeParams

# The process's strategy once `setup` ran (None = TensorFlow's default): process state, as
# TensorFlow's own; the devices and the cluster are fixed for the life of the process.
_strategy = None


def setup(runtime: RuntimeParams) -> None:
    """Create the strategy for this process. Call it first, before any other TensorFlow work:
    logical devices and the cluster can only be configured before TF starts. A missing or
    malformed TF_CONFIG stops here, before TensorFlow is imported; with the default strategy
    nothing is imported at all."""
    global _strategy
    if runtime.precision != "float32":
        import keras

        keras.mixed_precision.set_dtype_policy(runtime.precision)
        print(f"runtime: {runtime.precision} precision (float32 weights, losses and saved models)", flush=True)
    if runtime.strategy == "default":
        _strategy = None
        return
    if runtime.strategy == "mirrored":
        _strategy, where = _mirrored(runtime.cpu_replicas)
    else:
        _strategy, where = _multi_worker()
    print(f"runtime: {runtime.strategy} strategy, {_strategy.num_replicas_in_sync} replicas {where}", flush=True)


def _mirrored(cpu_replicas: int):
    import tensorflow as tf

    if not tf.config.list_physical_devices("GPU") and cpu_replicas > 1:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(cpu_replicas)])
    devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
    strategy = tf.distribute.MirroredStrategy([d.name for d in devices])
    return strategy, f"on {', '.join(d.name for d in devices)}"


def cluster_task() -> tuple[dict, str, int]:
    """The cluster, task type and index that ``TF_CONFIG`` gives this process, checked."""
    text = os.environ.get("TF_CONFIG", "")
    if not text.strip():
        raise KdflowError("runtime.strategy = multi_worker: set TF_CONFIG on every worker, e.g. "
                          '{"cluster": {"worker": ["host1:12345", "host2:12345"]}, "task": {"type": "worker", '
                          '"index": 0}} (docs/scale-out.md)')
    try:
        config = json.loads(text)
        cluster, task = config["cluster"], config["task"]
        task_type, index = task["type"], int(task["index"])
        hosts = cluster[task_type]
        if not isinstance(hosts, list) or not 0 <= index < len(hosts):
            raise ValueError(f"task index {index} is not in cluster.{task_type}")
    except (ValueError, KeyError, TypeError) as exc:
        raise KdflowError(f"TF_CONFIG: not a valid cluster description ({exc.__class__.__name__}: {exc}); "
                          "see docs/scale-out.md") from None
    if task_type not in ("chief", "worker"):
        raise KdflowError(f"TF_CONFIG: task type {task_type!r}: multi_worker runs `chief` and `worker` tasks only")
    return cluster, task_type, index


def is_chief_task(cluster: dict, task_type: str, index: int) -> bool:
    """TensorFlow's rule: the `chief` task, or worker 0 when the cluster has no chief."""
    return task_type == "chief" or (task_type == "worker" and index == 0 and "chief" not in cluster)


def _multi_worker():
    cluster, task_type, index = cluster_task()
    chief = is_chief_task(cluster, task_type, index)
    if not chief:
        discard_writes()
    import tensorflow as tf

    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    workers = sum(len(hosts) for hosts in cluster.values())
    role = "the chief" if chief else "writes nothing"
    return strategy, f"on {workers} workers (this is {task_type} {index}, {role})"


def strategy():
    """This process's strategy: the one ``setup`` made, or TensorFlow's default."""
    import tensorflow as tf

    return _strategy if _strategy is not None else tf.distribute.get_strategy()


def scope() -> ContextManager:
    """Build models (and anything holding variables) inside this, so they train under the strategy."""
    return _strategy.scope() if _strategy is not None else contextlib.nullcontext()
