"""Stage `evaluate`: teacher and every repeat of both students on the test split.

Writes metrics/evaluate.json: per model accuracy/loss/params (students: repeat 0, plus mean and
std over repeats), the paired KD gain with its 95% CI, and the share of the gap closed.
"""

from kdflow.errors import run_stage
from kdflow.params import load_params


def main() -> None:
    params = load_params()
    from kdflow import artifacts, repro
    from kdflow.data import load_prepared
    from kdflow.evaluation import evaluate_model, gap_closed, paired_gain, summarize_repeats
    from kdflow.io import load_model, write_json

    repro.make_deterministic(params.seed)
    data = load_prepared(("test",))
    x, y = data.xy("test")

    def evaluate(model):
        return evaluate_model(model, x, y, data.num_classes)

    teacher = load_model(artifacts.model_path("teacher"), produced_by="train_teacher")
    results = {"teacher": summarize_repeats([evaluate(teacher)])}
    per_repeat = {}
    for role in ("student_distilled", "student_scratch"):
        per_repeat[role] = [evaluate(m) for m in artifacts.load_students(role)]
        results[role] = summarize_repeats(per_repeat[role])
    gain = paired_gain([m["accuracy"] for m in per_repeat["student_distilled"]],
                       [m["accuracy"] for m in per_repeat["student_scratch"]])
    results["kd_gain"] = gain
    results["gap_closed"] = gap_closed(gain["mean"], results["teacher"]["accuracy"],
                                       results["student_scratch"]["accuracy_mean"])
    write_json("metrics/evaluate.json", results)

    for role in ("teacher", "student_distilled", "student_scratch"):
        r = results[role]
        print(f"evaluate: {role:18s} test accuracy {r['accuracy_mean']:.4f} ± {r['accuracy_std']:.4f} "
              f"(n={r['repeats']})  params {r['params']}")
    ci = "" if gain["ci95_low"] is None else f", 95% CI [{gain['ci95_low']:+.4f}, {gain['ci95_high']:+.4f}]"
    print(f"evaluate: KD gain {gain['mean']:+.4f}{ci}; gap closed {results['gap_closed']}")


if __name__ == "__main__":
    run_stage(main)
