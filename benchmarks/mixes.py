"""The cost of function matching (``python -m benchmarks.run --mixes``), on the committed data
(3,500 training digits) and teacher architecture (ResNet-20; untrained: timing only, any logits
cost the same to read):

- epoch times in interleaved rounds (as ``training_speed``; every variant reads the images from
  shards on disk, as the stages do): the scratch student on mixup views
  (an A/A control: a second, identical one), the distilled student reading the teacher's
  cached outputs for those views from shards on disk (as `distill` does), with 8 and with 256
  views per image (the latter, ``many_views``, stored as float16), and the online consistent teacher
  (``views.teacher: online``: the teacher run on every batch);
- the cache at 8, 64 and 256 views per image: the time ``kdflow.views.cache.compute`` takes, and its
  size on disk as float32, as float16 and as the top 5 of float16.
"""

from __future__ import annotations

import shutil
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks.common import ROOT, interleaved_rounds, trainer_rounds

MIXES_TARGETS = {"distill_cached_mixed_epoch_vs_scratch_mixed": 1.05,
                 "distill_cached_many_views_fp16_epoch_vs_scratch_mixed": 1.05}
CACHE_VIEWS = (8, 64, 256)


def _folder_mib(folder: Path) -> float:
    return round(sum(f.stat().st_size for f in folder.iterdir()) / 2**20, 2)


def mixes_report(quick: bool) -> dict:
    import numpy as np

    from kdflow.core.params import TrainParams
    from kdflow.core.prepared import Prepared, content_hash
    from kdflow.core.runner import deterministic
    from kdflow.core.shards import RowBlocks, ShardedArray
    from kdflow.core.shards import write as write_shards
    from kdflow.data.sources import load
    from kdflow.data.split import split
    from kdflow.distill import methods, objective
    from kdflow.models import families
    from kdflow.schema import Schema
    from kdflow.training.objective import HARD_LABELS, LABELS, training_model
    from kdflow.views import cache
    from kdflow.views.table import for_training

    committed = Schema.load(ROOT / "params.yaml")
    splits = split(load(committed.data), committed.data, committed.seed)
    n_train = 256 if quick else None
    (x, y), (x_val, y_val) = splits["train"], splits["val"]
    x, y = x[:n_train], y[:n_train]
    arrays = {"x_train": x, "y_train": y, "x_val": x_val, "y_val": y_val}
    data = Prepared({"num_classes": 10, "input_shape": list(x.shape[1:]), "content_hash": content_hash(arrays)},
                    arrays)
    rounds, epochs = (1, 2) if quick else (5, 4)
    cache_views = (2, 4) if quick else CACHE_VIEWS
    schedule = TrainParams(epochs=epochs, batch_size=64, learning_rate=3e-3, amsgrad=True, patience=None)
    mixed = committed.views.model_copy(update={"mix": "mixup"})
    teacher = families.build(committed.teacher, data.input_shape, 10, "teacher")
    teacher.trainable = False
    workdir = Path(tempfile.mkdtemp(prefix="kdflow_mixes_"))
    report = {"train_samples": len(x), "teacher_params": int(teacher.count_params()), "cache": {}}
    on_disk = {}
    try:
        for count in cache_views:
            cfg_count = mixed.model_copy(update={"count": count})
            drawn = for_training(committed.seed, len(x), cfg_count, data.input_shape)
            start = time.perf_counter()
            full = cache.compute(teacher, data, drawn)
            seconds = time.perf_counter() - start
            entry = {"compute_seconds": round(seconds, 2), "seconds_per_view": round(seconds / count, 3)}
            for name, kwargs in (("float32", {}), ("float16", {"dtype": "float16"}),
                                 ("float16_top_5", {"dtype": "float16", "top_k": 5})):
                stored = full if name == "float32" else cache.stored_form(full, data.num_classes, **kwargs)
                cache.save(stored, data, workdir / f"{count}_{name}")
                entry[f"mib_{name}"] = _folder_mib(workdir / f"{count}_{name}")
            # float16's error on the softmax at T = 1 (what the KD term reads)
            half = full["train"].astype(np.float16).astype(np.float32)
            p = np.exp(full["train"] - full["train"].max(-1, keepdims=True))
            q = np.exp(half - half.max(-1, keepdims=True))
            entry["float16_max_probability_error"] = float(np.abs(p / p.sum(-1, keepdims=True)
                                                                  - q / q.sum(-1, keepdims=True)).max())
            report["cache"][f"{count}_views"] = entry
            on_disk[count] = (drawn, workdir / f"{count}_{'float32' if count == cache_views[0] else 'float16'}")
            print(f"benchmark mixes cache {count} views: {entry}", flush=True)

        # every variant reads the images (and a mixed view's partners) from shards on disk, as the stages do
        write_shards(workdir / "images", "x", RowBlocks.of(x))
        x_on_disk = ShardedArray(workdir / "images", "x")

        def student():
            deterministic(0)
            return families.build(committed.student, data.input_shape, 10, "student")

        method = methods.build(committed.distill, committed.temperature)

        def goal(online=False):
            return objective.objective(method, committed.alpha, teacher=teacher if online else None)

        def variant(goal_, drawn, targets):
            return trainer_rounds(training_model(student(), goal_), schedule, (x_on_disk, {LABELS: y, **targets}),
                                  (x_val, {LABELS: y_val, **val_targets}), 0, goal_.callbacks(), drawn)

        few, many = cache_views[0], cache_views[-1]
        loaded = {count: cache.load(data, drawn, path) for count, (drawn, path) in on_disk.items()}
        val_targets = loaded[few]["val"]
        fresh = for_training(committed.seed, len(x), mixed.model_copy(update={"teacher": "online"}),
                             data.input_shape, epochs)
        variants = {
            "scratch_mixed": variant(HARD_LABELS, on_disk[few][0], {}),
            "scratch_mixed_control": variant(HARD_LABELS, on_disk[few][0], {}),
            "distill_cached_mixed": variant(goal(), on_disk[few][0], loaded[few]["train"]),
            "distill_cached_many_views_fp16": variant(goal(), on_disk[many][0], loaded[many]["train"]),
            "scratch_fresh_mixed": variant(HARD_LABELS, fresh, {}),
            "distill_online_mixed": variant(goal(online=True), fresh, {}),
        }
        seconds = interleaved_rounds(variants, rounds)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    def ratio(a, b):
        return round(statistics.median(ta / tb for ta, tb in zip(seconds[a], seconds[b])), 4)

    report["epoch_seconds"] = {k: round(statistics.median(v), 4) for k, v in seconds.items()}
    report["round_seconds"] = {k: [round(t, 4) for t in v] for k, v in seconds.items()}
    ratios = {"scratch_mixed_control_vs_scratch_mixed": ratio("scratch_mixed_control", "scratch_mixed"),
              "distill_cached_mixed_epoch_vs_scratch_mixed": ratio("distill_cached_mixed", "scratch_mixed"),
              "distill_cached_many_views_fp16_epoch_vs_scratch_mixed":
                  ratio("distill_cached_many_views_fp16", "scratch_mixed"),
              "distill_online_mixed_epoch_vs_scratch_fresh_mixed": ratio("distill_online_mixed", "scratch_fresh_mixed"),
              "distill_online_mixed_epoch_vs_distill_cached_mixed":
                  ratio("distill_online_mixed", "distill_cached_mixed")}
    report["many_views"] = many
    report["ratios"] = {k: ({"value": v, "target": MIXES_TARGETS[k], "met": v <= MIXES_TARGETS[k]}
                            if k in MIXES_TARGETS else {"value": v}) for k, v in ratios.items()}
    return report
