"""Stage `train_scratch`: the same student, labels only -> models/student_scratch.keras."""

from kdflow.errors import run_stage
from kdflow.params import load_params


def main() -> None:
    params = load_params()
    from kdflow import recipes
    from kdflow.data import load_prepared
    from kdflow.io import save_model, write_json

    model, summary = recipes.train_student(params, load_prepared(("train", "val")))
    save_model("models/student_scratch.keras", model)
    write_json("metrics/train_scratch.json", summary)
    print(f"train_scratch: val_accuracy={summary['val_accuracy']:.4f} -> models/student_scratch.keras")


if __name__ == "__main__":
    run_stage(main)
