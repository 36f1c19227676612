"""Stage `distill`: train the student on labels + cached teacher logits -> models/student_distilled.keras."""

from kdflow.errors import run_stage
from kdflow.params import load_params


def main() -> None:
    params = load_params()
    from kdflow import recipes, soft_targets
    from kdflow.data import load_prepared
    from kdflow.io import save_model, write_json

    data = load_prepared(("train", "val"))
    model, summary = recipes.train_student(params, data, soft_targets.load(data))
    save_model("models/student_distilled.keras", model)
    write_json("metrics/distill.json", summary)
    print(f"distill: val_accuracy={summary['val_accuracy']:.4f} -> models/student_distilled.keras")


if __name__ == "__main__":
    run_stage(main)
