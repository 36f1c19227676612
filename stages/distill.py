"""Stage `distill`: train `repeats` students on the augmented views, from the labels and the
teacher's cached outputs for each view.

Writes models/student_distilled.keras (repeat 0), models/student_distilled_repeats/ and
metrics/distill.json. A killed run resumes from its last finished epoch.
"""

from kdflow.params import load_params
from kdflow.runner import run_stage


def main() -> None:
    params = load_params()
    from kdflow import artifacts, distribute, recipes, resume, soft_targets
    from kdflow.data import load_prepared
    from kdflow.io import atomic_dir, write_json
    from kdflow.paths import PREPARED_DIR, SOFT_TARGETS_DIR, live_dir, metrics_file

    distribute.setup(params.runtime)
    data = load_prepared(("train", "val"))
    train_views = recipes.training_views(params, data)
    cache = soft_targets.load(data, train_views, with_features=params.distill.needs_teacher_features)
    with resume.run_dir("distill", params, [PREPARED_DIR, SOFT_TARGETS_DIR]) as run_dir:
        with atomic_dir(live_dir("distill")) as log_dir:
            students = recipes.train_students(params, data, cache, train_views=train_views,
                                              log_dir=log_dir, run_dir=run_dir)
            summary = artifacts.save_students("student_distilled", students)
        write_json(metrics_file("distill"), summary)
    print(f"distill ({params.distill.method}): mean val_accuracy={summary['val_accuracy_mean']:.4f} "
          f"over {params.repeats} repeats -> models/student_distilled*")


if __name__ == "__main__":
    run_stage(main)
