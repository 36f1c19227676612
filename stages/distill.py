"""Stage `distill`: train `repeats` students on the augmented views, from the labels and the
teacher's cached outputs for each view (and, for a method with a feature hint, the teacher's
features at its hint layer, computed here over the same views). With `views.teacher: online`
the teacher runs here on every batch, a fresh view of every image each epoch.

Writes models/student_distilled.keras (repeat 0), models/student_distilled_repeats/ and
metrics/distill.json. A killed run resumes from its last finished epoch.
"""

from kdflow.architectures import FAMILIES
from kdflow.losses import METHODS
from kdflow.params import load_params
from kdflow.runner import run_stage
from kdflow.views import VIEW_KINDS


def main() -> None:
    params = load_params(FAMILIES, VIEW_KINDS, METHODS)
    from kdflow import distribute, losses, soft_targets
    from kdflow.data import load_prepared

    distribute.setup(params.runtime)
    data = load_prepared(("train", "val"))
    soft_targets.check_data(data)
    from kdflow import artifacts, distillation, resume, views
    from kdflow.io import atomic_dir, write_json
    from kdflow.paths import PREPARED_DIR, SOFT_TARGETS_DIR, live_dir, metrics_file, model_file

    train_views = views.for_training(params.seed, len(data.xy("train")[1]), params.views, data.input_shape,
                                     params.train_student.epochs)
    online = params.views.teacher == "online" and train_views is not None
    cache = soft_targets.load(data, None if online else train_views)
    inputs = [PREPARED_DIR, SOFT_TARGETS_DIR]
    method = losses.method(params.distill, params.temperature)
    teacher = None
    if method.hinted or online:
        with distribute.scope():
            teacher = artifacts.load_role("teacher", safe_mode=params.teacher.safe_mode)
        teacher.trainable = False
        inputs.append(model_file("teacher"))
    if method.hinted:  # FitNets: the teacher's features at its hint layer, over the same views
        cache.update(soft_targets.features(teacher, data, method.teacher_layer, train_views))
    with resume.run_dir("distill", params, inputs) as run_dir:
        with atomic_dir(live_dir("distill")) as log_dir:
            trained = distillation.train_students(
                params.student, params.train_student, params.repeats, params.seed, data, cache, alpha=params.alpha,
                temperature=params.temperature, distill_cfg=params.distill, views=train_views, log_dir=log_dir,
                run_dir=run_dir, teacher=teacher if online else None)
            summary = artifacts.save_students("student_distilled", trained)
        write_json(metrics_file("distill"), summary)
    print(f"distill ({params.distill.method}): mean val_accuracy={summary['val_accuracy_mean']:.4f} "
          f"over {params.repeats} repeats -> models/student_distilled*")


if __name__ == "__main__":
    run_stage(main)
