"""Stage `train_teacher`: train teacher.* on the hard labels -> models/teacher.keras.

With teacher.source: file, the user's model at teacher.path (.keras, .h5 or a SavedModel) is
imported instead: checked against the prepared data and on its validation images, and saved
wrapped as a logits model (no training; its validation numbers go to the metrics). A killed
training run resumes from its last finished epoch."""

from kdflow.architectures import FAMILIES
from kdflow.params import load_params
from kdflow.runner import run_stage


def main() -> None:
    params = load_params(FAMILIES)  # validated before TensorFlow is imported: bad params fail fast
    from kdflow import distribute
    from kdflow.data import load_prepared

    distribute.setup(params.runtime)
    data = load_prepared(("train", "val"))
    from kdflow import artifacts, resume, teacher
    from kdflow.io import atomic_dir, write_json
    from kdflow.paths import PREPARED_DIR, live_dir, metrics_file, model_file

    if params.teacher.source == "file":
        model, summary = teacher.import_file(params.teacher, params.seed, data)
        with atomic_dir(live_dir("train_teacher")):  # no curves: nothing was trained
            artifacts.save_model(model_file("teacher"), model)
    else:
        with resume.run_dir("train_teacher", params, [PREPARED_DIR]) as run_dir:
            with atomic_dir(live_dir("train_teacher")) as log_dir:
                model, summary = teacher.train(params.teacher, params.train_teacher, params.seed, data, log_dir,
                                               run_dir)
                artifacts.save_model(model_file("teacher"), model)
    write_json(metrics_file("train_teacher"), summary)
    print(f"train_teacher: val_accuracy={summary['val_accuracy']:.4f} -> {model_file('teacher')}")


if __name__ == "__main__":
    run_stage(main)
