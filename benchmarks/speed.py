"""Training speed (``python -m benchmarks.run --speed-only``): our `distill` step against our
`train_scratch` step and against plain Keras, in this process, on the same student, data, batches
and epochs, in interleaved rounds; plus the online teacher (Keras' ``keras.distillation.Distiller``,
which runs the teacher every step)."""

from __future__ import annotations

import statistics

from benchmarks.common import ROOT, interleaved_rounds, online_epoch_seconds, plain_fit_rounds, spread, trainer_rounds

SPEED_VARIANTS = ("plain_fit", "scratch_nondeterministic", "scratch_control", "scratch",
                  "distill_cached_default_teacher", "distill_cached_large_teacher", "scratch_views",
                  "distill_views_default_teacher")


def training_speed(rounds: int, epochs_per_round: int, n_train: int | None, seed: int = 0) -> dict:
    """Epoch times of each training variant, measured in interleaved rounds.

    Every variant is built and traced once; then each round trains every variant for
    ``epochs_per_round`` epochs, one after the other (in reverse order every other round), and
    keeps the median epoch without the round's first (which includes setting up the round's
    input iterator). A ratio is taken within each round, between epochs timed seconds apart, and
    then its median over the rounds: on a shared 2-core machine, epoch times of one variant
    drift between runs a minute apart by more than the differences measured."""
    import numpy as np

    from kdflow.core.params import TrainParams
    from kdflow.core.runner import deterministic
    from kdflow.data.sources import load
    from kdflow.data.split import split
    from kdflow.distill import methods, objective
    from kdflow.models import families
    from kdflow.schema import Schema
    from kdflow.training.objective import HARD_LABELS, LABELS, training_model
    from kdflow.views.cache import TEACHER_LOGITS
    from kdflow.views.table import for_training

    # The training and validation arrays the stages train on: the committed params' split of the
    # embedded digits (3,500 / 500), so the steps per epoch, and with them the steps per compiled
    # call, are the stages' own.
    committed = Schema.load(ROOT / "params.yaml")
    splits = split(load(committed.data), committed.data, committed.seed)
    (x, y), (x_val, y_val) = splits["train"], splits["val"]
    x, y = x[:n_train], y[:n_train]
    # The committed default teacher (ResNet-20, 13x the student) and a 53x larger one.
    bench = Schema.checked({"student": {"arch": "notebook_student"}, "teacher": {"arch": "resnet20_w2"},
                            "alpha": 0.5, "temperature": 4.0})
    teachers = {"default": committed.teacher, "large": bench.teacher}
    schedule = TrainParams(epochs=epochs_per_round, batch_size=64, learning_rate=3e-3, amsgrad=True, patience=None)
    shape, classes = x.shape[1:], 10
    method = methods.build(bench.distill, bench.temperature)

    def student():
        deterministic(seed)
        return families.build(bench.student, shape, classes, "student")

    result = {"params": {}, "train_samples": len(x)}
    logits = {}
    for name, teacher_params in teachers.items():
        teacher = families.build(teacher_params, shape, classes, f"teacher_{name}")
        result["params"][f"teacher_{name}"] = int(teacher.count_params())
        # Timing only: an untrained teacher's logits cost the same to read as a trained one's.
        logits[name] = (teacher, teacher.predict(x, batch_size=512, verbose=0),
                        teacher.predict(x_val, batch_size=512, verbose=0))
    result["params"]["student"] = int(student().count_params())
    # The committed views of the training images; the per-view logits are the single-view ones
    # repeated (timing only: any logits cost the same to read).
    train_views = for_training(committed.seed, len(x), committed.views, shape)
    view_logits = np.repeat(logits["default"][1][:, None], train_views.count, axis=1)

    def ours(targets, val_targets, goal=HARD_LABELS, deterministic_ops=True, on_views=False):
        import tensorflow as tf
        # Not exported by TF 2.21's public API (only enable_op_determinism is).
        from tensorflow.python.framework import config as tf_config

        timed = trainer_rounds(training_model(student(), goal), schedule, (x, targets), (x_val, val_targets), seed,
                               goal.callbacks(), train_views if on_views else None)

        def train_round():
            if not deterministic_ops:
                tf_config.disable_op_determinism()
            times = timed()
            tf.config.experimental.enable_op_determinism()
            return times
        return train_round

    def distilled():
        return objective.objective(method, bench.alpha)

    labels, val_labels = {LABELS: y}, {LABELS: y_val}
    variants = {"plain_fit": plain_fit_rounds(student(), (x, y), (x_val, y_val), schedule, epochs_per_round),
                "scratch_nondeterministic": ours(labels, val_labels, deterministic_ops=False),
                # A/A control: a second, identical scratch student. Its ratio to `scratch` is 1.00
                # but for noise; it shows how far the machine moves a ratio that should not move.
                "scratch_control": ours(labels, val_labels),
                "scratch": ours(labels, val_labels)}
    for name in teachers:  # next to scratch in every round's order
        variants[f"distill_cached_{name}_teacher"] = ours(
            {**labels, TEACHER_LOGITS: logits[name][1]}, {**val_labels, TEACHER_LOGITS: logits[name][2]}, distilled())
    variants["scratch_views"] = ours(labels, val_labels, on_views=True)
    variants["distill_views_default_teacher"] = ours(
        {**labels, TEACHER_LOGITS: view_logits}, {**val_labels, TEACHER_LOGITS: logits["default"][2]},
        distilled(), on_views=True)
    assert tuple(variants) == SPEED_VARIANTS
    round_seconds = interleaved_rounds(variants, rounds)

    def online(name):
        # 3 epochs, once: its epochs take 10-30x ours, far above the noise.
        return online_epoch_seconds(logits[name][0], student(), (x, y), (x_val, y_val), schedule, epochs=3)

    epoch_seconds = {label: statistics.median(times) for label, times in round_seconds.items()}
    for name in teachers:
        epoch_seconds[f"online_{name}_teacher"] = online(name)
    result["round_seconds"] = {k: [round(t, 4) for t in v] for k, v in round_seconds.items()}
    result["epoch_seconds"] = {k: round(v, 4) for k, v in epoch_seconds.items()}
    result["samples_per_second"] = {k: round(len(x) / v, 1) for k, v in epoch_seconds.items()}
    return result


def paired_ratio(run: dict, a: str, b: str) -> float:
    """Median over one run's rounds of (a's epoch time / b's epoch time in the same round); a
    variant timed once (the online Distiller) against b's median epoch of the run."""
    if a not in run["round_seconds"]:
        return run["epoch_seconds"][a] / run["epoch_seconds"][b]
    return statistics.median(ta / tb for ta, tb in zip(run["round_seconds"][a], run["round_seconds"][b]))


def speed_ratios(speed_runs: list[dict]) -> dict:
    """The training-speed ratios, each over the runs (see ``paired_ratio``)."""
    def ratio(a, b):
        return spread([paired_ratio(r, a, b) for r in speed_runs])

    return {
        "distill_views_epoch_vs_scratch_views": ratio("distill_views_default_teacher", "scratch_views"),
        "views_vs_no_views_scratch_time": ratio("scratch_views", "scratch"),
        "distill_epoch_vs_scratch": ratio("distill_cached_default_teacher", "scratch"),
        "distill_large_teacher_epoch_vs_scratch": ratio("distill_cached_large_teacher", "scratch"),
        "online_default_teacher_epoch_vs_scratch": ratio("online_default_teacher", "scratch"),
        "online_large_teacher_epoch_vs_scratch": ratio("online_large_teacher", "scratch"),
        "plain_fit_vs_scratch_time": ratio("scratch", "plain_fit"),
        "plain_fit_vs_distill_time": ratio("distill_cached_default_teacher", "plain_fit"),
        # the noise floor: two identical scratch students (the same as 1.00 but for the machine)
        "scratch_control_vs_scratch": ratio("scratch_control", "scratch"),
    }


def unlabeled_speed(rounds: int, epochs_per_round: int, seed: int = 0) -> dict:
    """Seconds per training image of the distilled students' epoch on the labelled images plus as
    many without labels (label NO_LABEL: the teacher's argmax on the view stands in), against the
    scratch students' epoch on the labelled images alone, both on the committed views, in
    interleaved rounds as ``training_speed``; a second scratch student is the A/A control."""
    import numpy as np

    from kdflow.core.params import TrainParams
    from kdflow.core.prepared import NO_LABEL
    from kdflow.core.runner import deterministic
    from kdflow.data.sources import load
    from kdflow.data.split import split
    from kdflow.distill import methods, objective
    from kdflow.models import families
    from kdflow.schema import Schema
    from kdflow.training.objective import LABELS, training_model
    from kdflow.views.cache import TEACHER_LOGITS
    from kdflow.views.table import for_training

    committed = Schema.load(ROOT / "params.yaml")
    splits = split(load(committed.data), committed.data, committed.seed)
    (x, y), (x_val, y_val) = splits["train"], splits["val"]
    both = np.concatenate([x, x])  # the training images again, as images without labels
    labels = np.concatenate([y, np.full(len(y), NO_LABEL, y.dtype)])
    schedule = TrainParams(epochs=epochs_per_round, batch_size=64, learning_rate=3e-3, amsgrad=True, patience=None)
    shape = x.shape[1:]
    views = {n: for_training(committed.seed, n, committed.views, shape) for n in (len(x), len(both))}
    rng = np.random.default_rng(seed)  # timing only: any logits cost the same to read
    logits = rng.normal(size=(len(both), committed.views.count, 10)).astype(np.float32)
    val_logits = rng.normal(size=(len(x_val), 10)).astype(np.float32)

    def round_of(images, targets, val_targets, goal=None):
        deterministic(seed)
        model = training_model(families.build(committed.student, shape, 10, "student"), *([goal] if goal else []))
        return trainer_rounds(model, schedule, (images, targets), (x_val, val_targets), seed,
                              goal.callbacks() if goal else (), views[len(images)])

    distilled = objective.objective(methods.build(committed.distill, committed.temperature), committed.alpha)
    variants = {"scratch": round_of(x, {LABELS: y}, {LABELS: y_val}),
                "scratch_control": round_of(x, {LABELS: y}, {LABELS: y_val}),
                "distill_with_unlabeled": round_of(both, {LABELS: labels, TEACHER_LOGITS: logits},
                                                   {LABELS: y_val, TEACHER_LOGITS: val_logits}, distilled)}
    seconds = interleaved_rounds(variants, rounds)
    per_image = {name: [t / (len(both) if name.startswith("distill") else len(x)) for t in times]
                 for name, times in seconds.items()}
    ratio = {name: spread([a / b for a, b in zip(per_image[name], per_image["scratch"])])
             for name in ("distill_with_unlabeled", "scratch_control")}
    return {"images": {"labelled": len(x), "without_labels": len(x)},
            "epoch_seconds": {k: [round(t, 4) for t in v] for k, v in seconds.items()},
            "us_per_image": {k: round(statistics.median(v) * 1e6, 2) for k, v in per_image.items()},
            "distill_vs_scratch_per_image": ratio["distill_with_unlabeled"], "control_vs_scratch": ratio["scratch_control"]}
