"""The cost at real resolutions (``python -m benchmarks.run --sizes``): a MobileNetV3Small
student distilled from an EfficientNetV2B0 teacher on synthetic RGB images at 64, 96 and 128 px,
on random-resized-crop views (the ``crop`` kind).

At each size, in this process and in interleaved rounds (as ``training_speed``): the epoch of
our ``distill`` step, reading the images and the teacher's cached outputs from shards on disk
as the stage does, against our scratch student on the same views (the images from disk too) (and an A/A control: a second, identical
scratch student), against the same student's plain Keras ``fit`` on the images, and against
``keras.distillation.Distiller``, which runs the teacher every step; the time ``soft_targets``
spends per view. Then the stages, each in its own process as ``dvc repro`` runs them (wall
time, peak RSS), on the same images as an image folder, through ``export`` (the student's
SavedModel, TFLite float32 and int8: their accuracy and size).
"""

from __future__ import annotations

import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import (ROOT, batch_norm_seconds, epoch_seconds, interleaved_rounds, make_project, online_epoch_seconds,
                               plain_fit_rounds, run_measured, trainer_rounds)

SIZES_TARGETS = {
    "distill_epoch_vs_scratch": 1.05,  # at every size
    "distill_stage_vs_scratch_stage": 1.05,
    "distill_epoch_vs_online_distiller": 0.20,  # >= 5x faster than the online Distiller (same teacher)
}
STUDENT_EPOCHS = {64: 30, 96: 20, 128: 12}  # the stages' students: enough to learn the blobs (export accuracy)
STUDENT = {"arch": "MobileNetV3Small"}
TEACHER = {"arch": "EfficientNetV2B0"}  # cached by soft_targets, and in the stages
# Online Distiller teachers: the same EfficientNetV2B0 (12x the student's FLOPs) and a larger one
ONLINE_TEACHERS = ("EfficientNetV2B0", "ResNet50V2")
CLASSES = 10


def synthetic_images(count: int, px: int, seed: int):
    """Learnable RGB images: class c is a bright blob of colour c at a random place on noise."""
    import numpy as np

    rng = np.random.default_rng(seed)
    y = np.arange(count) % CLASSES
    x = rng.uniform(0, 0.4, size=(count, px, px, 3)).astype(np.float32)
    # the classes' colours are the same in every split (seed: the images' noise and places)
    colours = np.random.default_rng(CLASSES).uniform(0.3, 0.6, size=(CLASSES, 3)).astype(np.float32)
    for i, label in enumerate(y):
        r, c = rng.integers(0, px // 2, size=2)
        x[i, r:r + px // 2, c:c + px // 2] += colours[label]
    return np.clip(x, 0, 1), y.astype(np.int64)


def flops(model, shape) -> int:
    """Floating-point operations of one forward pass of ``model`` on one image (TF's profiler)."""
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    concrete = tf.function(lambda x: model(x, training=False)).get_concrete_function(
        tf.TensorSpec((1, *shape), tf.float32))
    graph = convert_variables_to_constants_v2(concrete).graph
    options = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
    options["output"] = "none"
    return int(tf.compat.v1.profiler.profile(graph=graph, options=options).total_float_ops)


def synthetic_case(px: int, n_train: int, views_count: int, seed: int = 0):
    """The RGB case at ``px``: its arrays as Prepared data, and its params."""
    from kdflow.core.prepared import Prepared, content_hash
    from kdflow.schema import Schema

    x, y = synthetic_images(n_train, px, seed)
    x_val, y_val = synthetic_images(max(64, n_train // 8), px, seed + 1)
    arrays = {"x_train": x, "y_train": y, "x_val": x_val, "y_val": y_val}
    data = Prepared({"num_classes": CLASSES, "input_shape": list(x.shape[1:]), "content_hash": content_hash(arrays),
                     "sizes": {"train": len(y), "val": len(y_val)}}, arrays)
    params = Schema.checked({"student": STUDENT, "teacher": TEACHER, "alpha": 0.5, "temperature": 4.0,
                             "views": {"count": views_count, "kind": "crop", "flip": True, "scale": [0.25, 1.0]}})
    return data, params


def default_case():
    """The embedded digits as the committed params split them, with the committed student,
    teacher (ResNet-20) and views (8 whole-pixel shifts)."""
    from kdflow.core.prepared import Prepared, content_hash
    from kdflow.data.sources import load
    from kdflow.data.split import split
    from kdflow.schema import Schema

    params = Schema.load(ROOT / "params.yaml")
    splits = split(load(params.data), params.data, params.seed)
    arrays = {f"{a}_{name}": value for name in ("train", "val") for a, value in zip("xy", splits[name])}
    data = Prepared({"num_classes": 10, "input_shape": list(arrays["x_train"].shape[1:]),
                     "content_hash": content_hash(arrays), "sizes": {n: len(arrays[f"y_{n}"]) for n in ("train", "val")}},
                    arrays)
    return data, params


def epoch_speed(data, params, rounds: int, epochs_per_round: int, seed: int = 0) -> dict:
    """Epoch times of our distill and scratch steps, plain Keras fit and the online Distiller on
    ``data`` (interleaved rounds), and soft_targets' time per view."""
    from kdflow.core.params import TrainParams
    from kdflow.core.runner import deterministic
    from kdflow.core.shards import RowBlocks, ShardedArray
    from kdflow.core.shards import write as write_shards
    from kdflow.distill import methods, objective
    from kdflow.models import families
    from kdflow.schema import Schema
    from kdflow.training.objective import HARD_LABELS, LABELS, training_model
    from kdflow.views import cache
    from kdflow.views.table import for_training

    (x, y), (x_val, y_val) = data.xy("train"), data.xy("val")
    shape, classes, n_train, views_count = data.input_shape, data.num_classes, len(y), params.views.count
    schedule = TrainParams(epochs=epochs_per_round, batch_size=64, learning_rate=3e-3, amsgrad=True, patience=None)

    def student():
        deterministic(seed)
        return families.build(params.student, shape, classes, "student")

    teacher = families.build(params.teacher, shape, classes, "teacher")
    result = {"px": shape[0], "train_images": n_train, "views": views_count,
              "params": {"student": int(student().count_params()), "teacher": int(teacher.count_params())},
              "flops": {"student": flops(student(), shape), "teacher": flops(teacher, shape)}}
    result["flops"]["teacher_vs_student"] = round(result["flops"]["teacher"] / result["flops"]["student"], 1)
    train_views = for_training(seed, n_train, params.views, shape)
    start = time.perf_counter()
    computed = cache.compute(teacher, data, train_views)  # every view of every image, as the stage
    result["soft_targets_seconds_per_view"] = round((time.perf_counter() - start) / views_count, 3)
    with tempfile.TemporaryDirectory(prefix="kdflow-sizes-") as tmp:
        cache.save(computed, data, Path(tmp))
        cached = cache.load(data, train_views, path=Path(tmp))  # read by rows, as distill does
        # both students read the images from shards on disk, as the stages do
        write_shards(Path(tmp) / "images", "x", RowBlocks.of(x))
        x_on_disk = ShardedArray(Path(tmp) / "images", "x")

        def ours(split_targets=None, goal=HARD_LABELS):
            targets = split_targets or {"train": {}, "val": {}}
            return trainer_rounds(training_model(student(), goal), schedule, (x_on_disk, {LABELS: y, **targets["train"]}),
                                  (x_val, {LABELS: y_val, **targets["val"]}), seed, goal.callbacks(), train_views)

        variants = {
            "plain_fit": plain_fit_rounds(student(), (x, y), (x_val, y_val), schedule, epochs_per_round),
            "scratch_control": ours(),
            "scratch": ours(),
            "distill": ours(cached, objective.objective(methods.build(params.distill, params.temperature), params.alpha)),
        }
        seconds = interleaved_rounds(variants, rounds)

    def online(teacher_model):
        return online_epoch_seconds(teacher_model, student(), (x, y), (x_val, y_val), schedule, epochs=2)

    online_seconds = {"teacher": online(teacher)}  # the cached teacher, run every step instead
    if params.teacher.arch == TEACHER["arch"]:  # the real-size cases: a larger teacher too
        large = families.build(Schema.checked({"teacher": {"arch": ONLINE_TEACHERS[1]}}).teacher, shape, classes,
                               "teacher_large")
        result["flops"]["large_teacher_vs_student"] = round(flops(large, shape) / result["flops"]["student"], 1)
        online_seconds[ONLINE_TEACHERS[1]] = online(large)

    def per_round(a, b):
        return statistics.median(ta / tb for ta, tb in zip(seconds[a], seconds[b]))

    epoch = {label: statistics.median(times) for label, times in seconds.items()}
    epoch.update({f"online_distiller_{name}": value for name, value in online_seconds.items()})
    result["epoch_seconds"] = {k: round(v, 3) for k, v in epoch.items()}
    result["images_per_second"] = {k: round(n_train / v, 1) for k, v in epoch.items()}
    result["ratios"] = {"distill_epoch_vs_scratch": round(per_round("distill", "scratch"), 3),
                        "scratch_control_vs_scratch": round(per_round("scratch_control", "scratch"), 3),
                        "distill_epoch_vs_plain_fit": round(per_round("distill", "plain_fit"), 3),
                        "distill_epoch_vs_online_distiller": round(epoch["distill"] / online_seconds["teacher"], 3)}
    if ONLINE_TEACHERS[1] in online_seconds:
        result["ratios"]["distill_epoch_vs_online_distiller_large_teacher"] = round(
            epoch["distill"] / online_seconds[ONLINE_TEACHERS[1]], 3)
    return result


def write_image_folder(folder: Path, px: int, count: int, seed: int) -> None:
    from PIL import Image

    x, y = synthetic_images(count, px, seed)
    for i, (image, label) in enumerate(zip(x, y)):
        target = folder / f"class_{label}"
        target.mkdir(parents=True, exist_ok=True)
        Image.fromarray((image * 255).round().astype("uint8")).save(target / f"{i:05d}.png")


STAGES = ("prepare", "train_teacher", "soft_targets", "distill", "train_scratch", "export")


def stage_costs(px: int, count: int, views_count: int, student_epochs: int) -> dict:
    """The stages as ``dvc repro`` runs them, each in its own process: wall seconds, peak RSS."""

    overrides = {"repeats": 1, "data.name": "image_dir", "data.image_size": [px, px],
                 "teacher": {**TEACHER, "source": "train", "path": "inputs"},
                 "student": dict(STUDENT), "train_teacher.epochs": 1, "train_teacher.patience": None,
                 "train_student.epochs": student_epochs,
                 "views": {"count": views_count, "kind": "crop", "flip": True, "scale": [0.25, 1.0], "top_k": 0}}
    result = {}
    with tempfile.TemporaryDirectory(prefix="kdflow-sizes-stages-") as tmp:
        images = Path(tmp) / "images"
        write_image_folder(images, px, count, seed=0)
        repo = make_project(Path(tmp), {**overrides, "data.path": str(images)})
        for stage in STAGES:
            log = Path(tmp) / f"{stage}.log"
            wall, peak = run_measured([sys.executable, "-m", f"stages.{stage}"], repo, log)
            result[stage] = {"seconds": round(wall, 2), "peak_rss_mib": round(peak, 1),
                             "epoch_seconds": epoch_seconds(log.read_text())}
            settling = batch_norm_seconds(log.read_text())
            if settling is not None:  # the re-estimation pass (and its accuracy checks) against the stage
                result[stage]["batch_norm_seconds"] = settling
                result[stage]["batch_norm_vs_stage"] = round(settling / wall, 4)
        exported = json.loads((repo / "metrics/export.json").read_text())
        result["export"] = {form: exported[form] for form in ("keras", "tflite_float32", "tflite_int8")}
        result["export"]["int8_accuracy_drop"] = exported["int8_accuracy_drop"]
        shutil.rmtree(repo)
    result["distill_stage_vs_scratch_stage"] = round(result["distill"]["seconds"] / result["train_scratch"]["seconds"], 3)
    return result


def default_stages(pairs: int, quick: bool) -> dict:
    """The committed pipeline's distill and train_scratch stages (committed epochs and views, one
    repeat), each in its own process as ``dvc repro`` runs it, in alternating pairs, with a
    second train_scratch run as the A/A control."""

    overrides = {"repeats": 1, "train_teacher.epochs": 1 if quick else 2}
    if quick:
        overrides["train_student.epochs"] = 2
    seconds = {"distill": [], "train_scratch": [], "train_scratch_control": []}
    peaks, settling = {}, {}
    with tempfile.TemporaryDirectory(prefix="kdflow-sizes-default-") as tmp:
        repo = make_project(Path(tmp), overrides)
        for stage in ("prepare", "train_teacher", "soft_targets"):
            log = Path(tmp) / f"{stage}.log"
            wall, _ = run_measured([sys.executable, "-m", f"stages.{stage}"], repo, log)
            if batch_norm_seconds(log.read_text()) is not None:  # the ResNet-20 teacher's
                settling[stage] = {"seconds": round(wall, 2), "batch_norm_seconds": batch_norm_seconds(log.read_text())}
        for pair in range(pairs):
            order = ["distill", "train_scratch", "train_scratch_control"]
            for label in (order if pair % 2 == 0 else order[::-1]):
                stage = label.removesuffix("_control")
                wall, peak = run_measured([sys.executable, "-m", f"stages.{stage}"], repo)
                seconds[label].append(wall)
                peaks[stage] = max(peaks.get(stage, 0.0), peak)
    # each stage's fastest run: a slower run is the shared machine, not the stage (one run of
    # train_scratch took 47 s against 27 s for the others, in a benchmark run that took the median)
    fastest = {label: min(v) for label, v in seconds.items()}
    return {"seconds": {k: [round(t, 2) for t in v] for k, v in seconds.items()},
            "peak_rss_mib": {k: round(v, 1) for k, v in peaks.items()},
            "batch_norm": settling,
            "distill_stage_vs_scratch_stage": round(fastest["distill"] / fastest["train_scratch"], 3),
            "scratch_control_vs_scratch_stage": round(fastest["train_scratch_control"] / fastest["train_scratch"], 3)}


def sizes_report(quick: bool) -> dict:
    sizes = (32,) if quick else (64, 96, 128)
    n_train, rounds, epochs, views_count = (128, 1, 2, 2) if quick else (256, 3, 3, 4)
    report = {"student": STUDENT["arch"], "teacher": TEACHER["arch"], "sizes": {}}
    data, params = default_case()
    default = epoch_speed(data, params, rounds=1 if quick else 5, epochs_per_round=3 if quick else 5)
    default["stages"] = default_stages(pairs=1 if quick else 2, quick=quick)
    report["sizes"]["default"] = default
    print(f"benchmark sizes default: {json.dumps(default)}", file=sys.stderr, flush=True)
    for px in sizes:
        speed = epoch_speed(*synthetic_case(px, n_train, views_count), rounds, epochs)
        speed["stages"] = stage_costs(px, n_train, views_count, student_epochs=2 if quick else STUDENT_EPOCHS[px])
        report["sizes"][f"{px}px"] = speed
        print(f"benchmark sizes {px}px: {json.dumps(speed)}", file=sys.stderr, flush=True)
    ratios = {}
    for name, target in SIZES_TARGETS.items():
        values = [s["stages"][name] if name.endswith("stage") else s["ratios"][name] for s in report["sizes"].values()]
        ratios[name] = {"per_size": values, "max": max(values), "target": target, "met": max(values) <= target}
    large = [s["ratios"].get("distill_epoch_vs_online_distiller_large_teacher") for s in report["sizes"].values()]
    ratios["distill_epoch_vs_online_distiller_large_teacher"] = {"per_size": large}
    ratios["scratch_control_vs_scratch"] = {"per_size": [s["ratios"]["scratch_control_vs_scratch"]
                                                         for s in report["sizes"].values()]}
    ratios["scratch_control_vs_scratch_stage"] = {"per_size": [s["stages"].get("scratch_control_vs_scratch_stage")
                                                               for s in report["sizes"].values()]}
    report["ratios"] = ratios
    return report


def many_classes_memory(quick: bool) -> dict:
    """The distill stage's peak RSS as images x views x classes grows 16x (4x the images, 4x the
    views) at 200 classes, with full logits and with top-k: the cached outputs are read a batch
    at a time, so the peak should not follow them (``soft_targets`` still holds them whole while
    computing them; its peak is shown too)."""
    import numpy as np

    classes, base = (50, 500) if quick else (200, 4000)
    result = {"classes": classes, "cases": {}}
    with tempfile.TemporaryDirectory(prefix="kdflow-many-classes-") as tmp:
        for scale, views_count in ((1, 4), (4, 16)):
            rng = np.random.default_rng(0)
            n = base * scale
            source = Path(tmp) / f"many_x{scale}.npz"
            np.savez(source, x_train=rng.integers(0, 256, size=(n, 8, 8), dtype=np.uint8),
                     y_train=np.arange(n) % classes)
            for top_k in (0, 10):
                label = f"images_x{scale}_views_{views_count}_top_k_{top_k}"
                repo = make_project(Path(tmp) / label, {
                    "repeats": 1, "data.name": "npz", "data.path": str(source), "data.val_fraction": 0.1,
                    "data.test_fraction": 0.1, "teacher": {"arch": "repo_student"}, "student": {"arch": "repo_student"},
                    "train_teacher.epochs": 1, "train_student.epochs": 1, "train_teacher.augment.shift": 0.0,
                    "views": {"count": views_count, "kind": "shift", "shift": 1, "flip": False, "top_k": top_k}})
                peaks = {stage: round(run_measured([sys.executable, "-m", f"stages.{stage}"], repo)[1], 1)
                         for stage in ("prepare", "train_teacher", "soft_targets", "distill")}
                cached = sum(f.stat().st_size for f in (repo / "data/soft_targets").glob("train*.npy"))
                result["cases"][label] = {"train_images": int(n * 0.8), "cached_train_mib": round(cached / 2**20, 1),
                                          "peak_rss_mib": {k: peaks[k] for k in ("soft_targets", "distill")}}
                print(f"benchmark many classes {label}: {json.dumps(result['cases'][label])}", file=sys.stderr,
                      flush=True)
                shutil.rmtree(repo)
    for top_k in (0, 10):
        low = result["cases"][f"images_x1_views_4_top_k_{top_k}"]["peak_rss_mib"]["distill"]
        high = result["cases"][f"images_x4_views_16_top_k_{top_k}"]["peak_rss_mib"]["distill"]
        result[f"distill_peak_x16_vs_x1_top_k_{top_k}"] = round(high / low, 3)
    return result
