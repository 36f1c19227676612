"""Stage `evaluate`: the teacher and every repeat of the three students (four with images without
labels: the pseudo-labelled students) on the test split.

Writes metrics/evaluate.json (reproducible: accuracy, NLL, ECE before and after temperature
scaling fitted on the validation split, per-class accuracy, fidelity to the teacher, size, the
teacher check on validation, the three paired gains with their 95% CIs, gap closed, compression),
the DVC confusion plots in dvclive/evaluate/, and reports/ (summary.md with the export stage's
deployment numbers, figures). CPU latency is wall-clock: timings/evaluate.json, not tracked.
"""

from kdflow.core.params import Params
from kdflow.core.runner import run_stage
from kdflow.distill.methods import DistillParams
from kdflow.models.params import StudentParams, TeacherParams
from kdflow.views.params import ViewsParams


class Read(Params):
    """What this stage reads of params.yaml, typed (the report names the models, views and method)."""

    teacher: TeacherParams = TeacherParams()
    student: StudentParams = StudentParams()
    views: ViewsParams = ViewsParams()
    distill: DistillParams = DistillParams()


def main() -> None:
    params = Read.load()
    from kdflow.core.io import read_json, write_json
    from kdflow.core.paths import metrics_file, timings_file
    from kdflow.core.prepared import load_prepared
    from kdflow.core.runner import deterministic
    from kdflow.distill import methods
    from kdflow.evaluate.comparison import compare, gains_of, roles_of, teacher_warning
    from kdflow.evaluate.report import kd_verdict, recommendation, write_confusion_plots, write_report

    data = load_prepared(("val", "test"))
    deployment = read_json(metrics_file("export"), produced_by="export")
    deterministic(params.seed)
    result = compare(data, teacher_safe_mode=params.teacher.safe_mode)
    if warning := teacher_warning(result.metrics["teacher_check"]):
        print(f"evaluate: WARNING: {warning}")
    key_params = {"dataset": data.dataset, "teacher": params.teacher.arch, "student": params.student.arch,
                  "distill.method": params.distill.method, "alpha": params.alpha, "temperature": params.temperature,
                  **params.views.shaping_keys(), "repeats": params.repeats,
                  "train_student.epochs": params.train_student.epochs, "seed": params.seed}
    # a method's feature terms weigh on the students at alpha = 1 too (the report says why it helped)
    with_features = bool(methods.build(params.distill, params.temperature).features)
    write_confusion_plots(result, data.class_names)
    write_report(result, key_params, with_features, data.class_names, deployment)
    write_json(metrics_file("evaluate"), result.metrics)
    write_json(timings_file("evaluate"), {"unit": "ms, median per call", **result.latency})

    for role in roles_of(result.metrics):
        r = result.metrics[role]
        print(f"evaluate: {role:18s} test accuracy {r['accuracy_mean']:.4f} ± {r['accuracy_std']:.4f} "
              f"(n={r['repeats']})  ECE {r['ece_mean']:.4f} -> {r['ece_calibrated_mean']:.4f} calibrated  params {r['params']}  "
              f"latency {result.latency[role]['batch_1']:.3f} ms (1 sample)")
    for name in gains_of(result.metrics):
        gain = result.metrics[name]
        ci = "" if gain["ci95_low"] is None else f", 95% CI [{gain['ci95_low']:+.4f}, {gain['ci95_high']:+.4f}]"
        print(f"evaluate: {name} {gain['mean']:+.4f}{ci}")
    print(f"evaluate: gap closed {result.metrics['gap_closed']}; report in reports/summary.md")
    print("evaluate: " + kd_verdict(result.metrics, params.alpha, with_features).replace("**", ""))
    print("evaluate: which to use: " + recommendation(result.metrics).replace("**", ""))


if __name__ == "__main__":
    run_stage(main)
