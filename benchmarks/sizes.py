"""The cost at real resolutions (``python -m benchmarks.run --sizes``): a MobileNetV3Small
student distilled from an EfficientNetV2B0 teacher on synthetic RGB images at 64, 96 and 128 px,
on random-resized-crop views (the ``crop`` kind).

At each size, in this process and in interleaved rounds (as ``training_speed``): the epoch of
our ``distill`` step, reading the teacher's cached outputs from shards on disk as the stage
does, against our scratch student on the same views (and an A/A control: a second, identical
scratch student), against the same student's plain Keras ``fit`` on the images, and against
``keras.distillation.Distiller``, which runs the teacher every step; the time ``soft_targets``
spends per view. Then the whole ``soft_targets``, ``distill`` and ``train_scratch`` stages,
each in its own process as ``dvc repro`` runs them (wall time, peak RSS), on the same images
as an image folder.
"""

from __future__ import annotations

import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

SIZES_TARGETS = {
    "distill_epoch_vs_scratch": 1.05,  # at every size
    "distill_stage_vs_scratch_stage": 1.05,
    "distill_epoch_vs_online_distiller": 0.20,  # >= 5x faster than the online Distiller
}
STUDENT = {"arch": "MobileNetV3Small"}
TEACHER = {"arch": "EfficientNetV2B0"}
CLASSES = 10


def synthetic_images(count: int, px: int, seed: int):
    """Learnable RGB images: class c is a bright blob of colour c at a random place on noise."""
    import numpy as np

    rng = np.random.default_rng(seed)
    y = np.arange(count) % CLASSES
    x = rng.uniform(0, 0.4, size=(count, px, px, 3)).astype(np.float32)
    colours = rng.uniform(0.3, 0.6, size=(CLASSES, 3)).astype(np.float32)
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


def epoch_speed(px: int, n_train: int, rounds: int, epochs_per_round: int, views_count: int, seed: int = 0) -> dict:
    import keras
    import numpy as np

    from benchmarks.run import EpochTimer, steady_epoch_time
    from kdflow import architectures, distillation, objective, repro, soft_targets, views
    from kdflow.data import Prepared, content_hash
    from kdflow.distillation import TEACHER_LOGITS
    from kdflow.extensions import validate_all
    from kdflow.objective import LABELS, training_model
    from kdflow.params import TrainParams
    from kdflow.training import fit

    x, y = synthetic_images(n_train, px, seed)
    x_val, y_val = synthetic_images(max(64, n_train // 8), px, seed + 1)
    shape = x.shape[1:]
    arrays = {"x_train": x, "y_train": y, "x_val": x_val, "y_val": y_val}
    data = Prepared({"num_classes": CLASSES, "input_shape": list(shape), "content_hash": content_hash(arrays),
                     "sizes": {"train": len(y), "val": len(y_val)}}, arrays)
    params = validate_all({"student": STUDENT, "teacher": TEACHER, "alpha": 0.5, "temperature": 4.0,
                           "views": {"count": views_count, "kind": "crop", "flip": True, "scale": [0.25, 1.0]}})
    cfg = TrainParams(epochs=epochs_per_round, batch_size=64, learning_rate=3e-3, amsgrad=True, patience=None)

    def student():
        repro.make_deterministic(seed)
        return architectures.build(params.student, shape, CLASSES, "student")

    teacher = architectures.build(params.teacher, shape, CLASSES, "teacher")
    result = {"px": px, "train_images": n_train, "views": views_count,
              "params": {"student": int(student().count_params()), "teacher": int(teacher.count_params())},
              "flops": {"student": flops(student(), shape), "teacher": flops(teacher, shape)}}
    result["flops"]["teacher_vs_student"] = round(result["flops"]["teacher"] / result["flops"]["student"], 1)
    train_views = views.for_training(seed, n_train, params.views, shape)
    start = time.perf_counter()
    cache = soft_targets.compute(teacher, data, train_views)  # every view of every image, as the stage
    result["soft_targets_seconds_per_view"] = round((time.perf_counter() - start) / views_count, 3)
    with tempfile.TemporaryDirectory(prefix="kdflow-sizes-") as tmp:
        soft_targets.save(cache, data, Path(tmp))
        cached = soft_targets.load(data, train_views, path=Path(tmp))  # read by rows, as distill does

        def ours(targets, val_targets, goal=objective.HARD_LABELS):
            model = training_model(student(), goal)

            def train_round():
                timer = EpochTimer()
                fit(model, (x, targets), (x_val, val_targets), cfg, seed, [*goal.callbacks(), timer], views=train_views)
                return timer.times
            return train_round

        def plain_fit():
            model = student()
            model.compile(optimizer=keras.optimizers.Adam(cfg.learning_rate, amsgrad=True),
                          loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))

            def train_round():
                timer = EpochTimer()
                model.fit(x, y, batch_size=cfg.batch_size, epochs=epochs_per_round, validation_data=(x_val, y_val),
                          callbacks=[timer], verbose=0)
                return timer.times
            return train_round

        labels, val_labels = {LABELS: y}, {LABELS: y_val}
        variants = {
            "plain_fit": plain_fit(),
            "scratch_control": ours(labels, val_labels),
            "scratch": ours(labels, val_labels),
            "distill": ours({**labels, TEACHER_LOGITS: cached["train"]}, {**val_labels, TEACHER_LOGITS: cached["val"]},
                            distillation.objective(params.alpha, params.temperature, params.distill)),
        }
        for train_round in variants.values():
            train_round()  # tracing and warm-up, not timed
        seconds = {label: [] for label in variants}
        for r in range(rounds):
            for label in (list(variants) if r % 2 == 0 else list(reversed(variants))):
                seconds[label].append(steady_epoch_time(variants[label]()))

    distiller = keras.distillation.Distiller(
        teacher=teacher, student=student(),
        distillation_losses=keras.distillation.LogitsDistillation(temperature=4.0), student_loss_weight=0.5)
    distiller.compile(optimizer=keras.optimizers.Adam(cfg.learning_rate, amsgrad=True),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    timer = EpochTimer()
    distiller.fit(x, y, batch_size=cfg.batch_size, epochs=2, validation_data=(x_val, y_val), callbacks=[timer], verbose=0)
    online = steady_epoch_time(timer.times)

    def per_round(a, b):
        return statistics.median(ta / tb for ta, tb in zip(seconds[a], seconds[b]))

    epoch = {label: statistics.median(times) for label, times in seconds.items()}
    epoch["online_distiller"] = online
    result["epoch_seconds"] = {k: round(v, 3) for k, v in epoch.items()}
    result["images_per_second"] = {k: round(n_train / v, 1) for k, v in epoch.items()}
    result["ratios"] = {"distill_epoch_vs_scratch": round(per_round("distill", "scratch"), 3),
                        "scratch_control_vs_scratch": round(per_round("scratch_control", "scratch"), 3),
                        "distill_epoch_vs_plain_fit": round(per_round("distill", "plain_fit"), 3),
                        "distill_epoch_vs_online_distiller": round(epoch["distill"] / online, 3)}
    return result


def write_image_folder(folder: Path, px: int, count: int, seed: int) -> None:
    from PIL import Image

    x, y = synthetic_images(count, px, seed)
    for i, (image, label) in enumerate(zip(x, y)):
        target = folder / f"class_{label}"
        target.mkdir(parents=True, exist_ok=True)
        Image.fromarray((image * 255).round().astype("uint8")).save(target / f"{i:05d}.png")


STAGES = ("prepare", "train_teacher", "soft_targets", "distill", "train_scratch")


def stage_costs(px: int, count: int, views_count: int, student_epochs: int) -> dict:
    """The stages as ``dvc repro`` runs them, each in its own process: wall seconds, peak RSS."""
    from benchmarks.run import epoch_seconds, make_project, run_measured

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
        shutil.rmtree(repo)
    result["distill_stage_vs_scratch_stage"] = round(result["distill"]["seconds"] / result["train_scratch"]["seconds"], 3)
    return result


def sizes_report(quick: bool) -> dict:
    sizes = (32,) if quick else (64, 96, 128)
    n_train, rounds, epochs, views_count = (128, 1, 2, 2) if quick else (640, 3, 3, 4)
    report = {"student": STUDENT["arch"], "teacher": TEACHER["arch"], "sizes": {}}
    for px in sizes:
        speed = epoch_speed(px, n_train, rounds, epochs, views_count)
        speed["stages"] = stage_costs(px, n_train, views_count, student_epochs=2 if quick else 4)
        report["sizes"][f"{px}px"] = speed
        print(f"benchmark sizes {px}px: {json.dumps(speed)}", file=sys.stderr, flush=True)
    ratios = {}
    for name, target in SIZES_TARGETS.items():
        values = [s["stages"][name] if name.endswith("stage") else s["ratios"][name] for s in report["sizes"].values()]
        ratios[name] = {"per_size": values, "max": max(values), "target": target, "met": max(values) <= target}
    ratios["scratch_control_vs_scratch"] = {"per_size": [s["ratios"]["scratch_control_vs_scratch"]
                                                         for s in report["sizes"].values()]}
    report["ratios"] = ratios
    return report
