"""Stage `evaluate`: teacher, distilled and scratch students on the test split -> metrics/evaluate.json."""

from kdflow.errors import run_stage
from kdflow.params import load_params

MODELS = {
    "teacher": ("models/teacher.keras", "train_teacher"),
    "student_distilled": ("models/student_distilled.keras", "distill"),
    "student_scratch": ("models/student_scratch.keras", "train_scratch"),
}


def main() -> None:
    params = load_params()
    from kdflow import repro
    from kdflow.data import load_prepared
    from kdflow.evaluation import evaluate_model
    from kdflow.io import load_model, write_json

    repro.make_deterministic(params.seed)
    data = load_prepared(("test",))
    x, y = data.xy("test")
    results = {
        name: evaluate_model(load_model(path, produced_by=stage), x, y, data.num_classes)
        for name, (path, stage) in MODELS.items()
    }
    gain = results["student_distilled"]["accuracy"] - results["student_scratch"]["accuracy"]
    results["kd_gain"] = {"accuracy": round(gain, 6)}
    write_json("metrics/evaluate.json", results)
    for name in MODELS:
        print(f"evaluate: {name:18s} test accuracy {results[name]['accuracy']:.4f}  params {results[name]['params']}")
    print(f"evaluate: distilled - scratch = {gain:+.4f}")


if __name__ == "__main__":
    run_stage(main)
