"""Stage `train_teacher`: train teacher.* on the hard labels -> models/teacher.keras.

With teacher.source: file, the user's model at teacher.path is checked against the prepared
data and copied instead (no training; its validation numbers go to the metrics). A killed
training run resumes from its last finished epoch."""

from kdflow.errors import run_stage
from kdflow.params import load_params


def main() -> None:
    params = load_params()  # validated before TensorFlow is imported: bad params fail fast
    from kdflow import artifacts, distribute, recipes, resume, tracking
    from kdflow.data import PREPARED_DIR, load_prepared
    from kdflow.io import atomic_dir, save_model, write_json

    distribute.setup(params.runtime)
    data = load_prepared(("train", "val"))
    if params.teacher.source == "file":
        model, summary = recipes.import_teacher(params, data)
        with atomic_dir(tracking.live_dir("train_teacher")):  # no curves: nothing was trained
            save_model(artifacts.model_path("teacher"), model)
    else:
        with resume.run_dir("train_teacher", params, [PREPARED_DIR]) as run_dir:
            with atomic_dir(tracking.live_dir("train_teacher")) as log_dir:
                model, summary = recipes.train_teacher(params, data, log_dir, run_dir)
                save_model(artifacts.model_path("teacher"), model)
    write_json("metrics/train_teacher.json", summary)
    print(f"train_teacher: val_accuracy={summary['val_accuracy']:.4f} -> models/teacher.keras")


if __name__ == "__main__":
    run_stage(main)
