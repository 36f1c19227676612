"""What `evaluate` shows people: reports/summary.md with its figures, and DVC confusion plots.

reports/ is a DVC output and reproduces bit for bit like metrics/evaluate.json: the wall-clock
latency is not in it (the evaluate stage writes it to timings/evaluate.json).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from kdflow.core.io import atomic_dir
from kdflow.core.paths import REPORTS_DIR, live_dir
from kdflow.evaluate.comparison import PSEUDO, ROLES, Comparison, gains_of, roles_of, teacher_warning
from kdflow.evaluate.metrics import calibration_bins

TITLES = {"teacher": "teacher", "student_distilled": "distilled student (views)",
          "student_scratch": "scratch student (views)", "student_plain": "plain scratch student (no augmentation)",
          PSEUDO: "pseudo-labelled student (views, with the images without labels)"}
GAIN_TITLES = {"kd_gain": "KD gain (distilled − scratch, both on the views)",
               "augment_gain": "Augmentation alone (scratch on the views − plain scratch)",
               "combined_gain": "Both together (distilled on the views − plain scratch)",
               "extra_images_gain": "The images without labels, under the teacher's labels (pseudo-labelled − scratch)",
               "soft_gain": "The soft targets on top (distilled − pseudo-labelled, same images)"}


def write_confusion_plots(comparison: Comparison, class_names: list[str], directory: Path = live_dir("evaluate")) -> None:
    """One DVC `confusion` plot per model (repeat 0), via dvclive's sklearn plot writer."""
    from dvclive import Live

    names = np.asarray(class_names)
    with atomic_dir(directory) as staging:
        live = Live(dir=str(staging), dvcyaml=None, save_dvc_exp=False, report=None)
        for role in ROLES:
            live.log_sklearn_plot("confusion_matrix", names[comparison.labels],
                                  names[comparison.predictions[role].argmax(axis=1)],
                                  name=f"confusion/{role}.json")
        live.end()


def write_report(comparison: Comparison, key_params: dict[str, Any], with_features: bool, class_names: list[str],
                 deployment: dict | None = None, directory: Path = REPORTS_DIR) -> None:
    """reports/summary.md and the PNG figures, swapped in as a whole (``key_params`` and
    ``with_features``: see ``summary_markdown``)."""
    with atomic_dir(directory) as staging:
        (staging / "figures").mkdir()
        _reliability_figure(comparison, staging / "figures" / "reliability.png")
        for role in roles_of(comparison.metrics):
            _confusion_figure(comparison, role, class_names, staging / "figures" / f"confusion_{role}.png")
        (staging / "summary.md").write_text(summary_markdown(comparison, key_params, with_features, deployment))


def _fmt_size(size: int) -> str:
    return f"{size / 1024:.1f} KiB"


def deployment_markdown(export: dict) -> list[str]:
    """The `export` stage's forms of the distilled student (repeat 0), from metrics/export.json."""
    rows = [f"| {label} | {export[key]['accuracy']:.4f} | {_fmt_size(export[key]['size_bytes'])} |"
            for key, label in (("keras", "Keras `student.keras`"), ("tflite_float32", "TFLite float32"),
                               ("tflite_int8", "TFLite int8 (full-integer)"))]
    return ["**Deployment** (distilled student, repeat 0; `export/`): every form divides its logits by "
            f"the temperature T = {export['temperature']:.3f} fitted on the validation split, so its "
            "probabilities are the calibrated ones.", "",
            "| form | test accuracy | size |", "|---|---|---|", *rows, "",
            f"int8 accuracy drop vs Keras: {export['int8_accuracy_drop'] * 100:+.2f} points; "
            f"int8 file {export['int8_size_ratio']:.1f}× smaller than the `.keras` file.", ""]


def summary_markdown(comparison: Comparison, key_params: dict[str, Any], with_features: bool,
                     deployment: dict | None = None) -> str:
    """The report. ``key_params``: the run's key params ("key" -> value, shown as they are;
    `alpha` and `views.count` among them); ``with_features``: the method adds a term on the
    teacher's features."""
    m = comparison.metrics
    rows = []
    roles = roles_of(m)
    for role in roles:
        r = m[role]
        acc = f"{r['accuracy_mean']:.4f} ± {r['accuracy_std']:.4f}" if r["repeats"] > 1 else f"{r['accuracy']:.4f}"
        rows.append(f"| {TITLES[role]} | {acc} | {r['repeats']} | {r['loss_mean']:.4f} → {r['loss_calibrated_mean']:.4f} | "
                    f"{r['ece_mean']:.4f} → {r['ece_calibrated_mean']:.4f} | {r['temperature']:.3f} | "
                    f"{r['params']:,} | {_fmt_size(r['size_bytes'])} |")
    fidelity_rows = [_fidelity_row(role, m[role]) for role in roles[1:]]
    gains = [f"| {GAIN_TITLES[name]} | {_gain_text(m[name])} |" for name in gains_of(m)]
    gap = _gap_text(m)
    warning = teacher_warning(m["teacher_check"])
    c = m["compression"]
    lines = [
        "# kdflow summary",
        "",
        *([f"> **Teacher check**: {warning}.", ""] if warning else []),
        kd_verdict(m, key_params["alpha"], with_features),
        "",
        "Test split. Students: mean ± std over paired repeats; NLL, ECE and agreement are means "
        "over repeats; size, params and the temperature T are repeat 0's (the model that ships). "
        "NLL and ECE are shown before → after temperature scaling (T fitted on the validation split; "
        "accuracy does not change). CPU latency is wall-clock and varies run to run, so it is not "
        "here: see timings/evaluate.json.",
        "",
        "| model | test accuracy | repeats | NLL | ECE (15 bins) | T | params | size |",
        "|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        "**Fidelity** to the teacher on the test split (means over repeats; each repeat in "
        "metrics/evaluate.json, `fidelity_per_repeat`): the share of images whose top-1 class is the "
        "teacher's, the share where the teacher's top-1 class is among the student's top 5, and the "
        "mean KL(teacher ‖ student) at T = 1. A student that matches its teacher's function is what "
        "distillation is for, whether or not accuracy moves.",
        "",
        "| student | top-1 agreement | top-5 agreement | KL to the teacher (nats) |",
        "|---|---|---|---|",
        *fidelity_rows,
        "",
        *([f"The teacher is an ensemble of {len(m['teacher']['members_accuracy'])}: its members' test accuracy "
           + ", ".join(f"{a:.4f}" for a in m["teacher"]["members_accuracy"])
           + f"; the ensemble's {m['teacher']['accuracy']:.4f}.", ""] if "members_accuracy" in m["teacher"] else []),
        f"**Which to use on this data**: {recommendation(m)}",
        "",
        *(["`views.count` is 0: no student is augmented, so the scratch and the plain students are the "
           "same and augmentation shows no effect.", ""] if key_params["views.count"] == 0 else []),
        f"Paired comparisons over {m['kd_gain']['pairs']} seeds (points of test accuracy, 95% CI):",
        "",
        "| comparison | gain |",
        "|---|---|",
        *gains,
        "",
        f"**Gap closed** by distillation: {gap}.",
        "",
        f"**Compression**: {c['param_ratio']:.1f}× fewer parameters, {c['size_ratio']:.1f}× smaller file "
        "than the teacher.",
        "",
        "Key params: " + ", ".join(f"`{k}={v}`" for k, v in key_params.items()),
        "",
        *(deployment_markdown(deployment) if deployment else []),
        "![reliability diagram](figures/reliability.png)",
        "",
        *[f"![confusion matrix, {TITLES[role]}](figures/confusion_{role}.png)" for role in roles],
        "",
    ]
    return "\n".join(lines)


def _fidelity_row(role: str, r: dict) -> str:
    return (f"| {TITLES[role]} | {r['teacher_agreement_mean']:.4f} | {r['teacher_top5_agreement_mean']:.4f} | "
            f"{r['teacher_kl_mean']:.4f} |")


def _gap_text(m: dict) -> str:
    """gap_closed in words; when it is undefined, why."""
    if m["gap_closed"] is not None:
        pseudo = m.get("gap_closed_pseudo")
        return (f"{m['gap_closed'] * 100:.0f}% of the teacher–scratch gap (views)"
                + ("" if pseudo is None else f"; by the pseudo-labelled students, {pseudo * 100:.0f}%"))
    teacher, scratch = m["teacher"]["accuracy"], m["student_scratch"]["accuracy_mean"]
    if teacher <= scratch:
        return (f"undefined: the teacher ({teacher:.4f}) is not more accurate than the scratch students ({scratch:.4f}) "
                "on test, so there is no gap to close")
    return (f"undefined: the teacher–scratch gap on test ({(teacher - scratch) * 100:.2f} points) is within the noise "
            f"(not above twice the scratch students' std, {2 * m['student_scratch']['accuracy_std'] * 100:.2f}), "
            "and a share of noise means nothing")


def _gain_text(gain: dict) -> str:
    ci = "" if gain["ci95_low"] is None else f" [{gain['ci95_low'] * 100:+.2f}, {gain['ci95_high'] * 100:+.2f}]"
    return f"{gain['mean'] * 100:+.2f}{ci}"


def _shows(gain: dict) -> str:
    """'up' / 'down' when the 95% CI lies above / below zero, else 'none'."""
    if gain["ci95_low"] is None:
        return "none"
    return "up" if gain["ci95_low"] > 0 else "down" if gain["ci95_high"] < 0 else "none"


def kd_verdict(m: dict, alpha: float, with_features: bool = False) -> str:
    """One sentence: did distillation help, have no demonstrated effect, or hurt, and why when
    the reason is known (``with_features``: the method adds a term on the teacher's features,
    which acts at alpha = 1 too)."""
    gain = m["kd_gain"]
    text = f"{_gain_text(gain)} points of test accuracy over the scratch students on the same views"
    reasons = []
    if alpha == 1.0 and not with_features:
        reasons.append("alpha = 1: the students had no weight on the teacher's outputs (the recipe search "
                       "chose no distillation when no recipe beat the scratch students on validation)")
    if not m["teacher_check"]["teacher_clearly_better"]:
        reasons.append("the teacher is not clearly better than the scratch students on validation")
    if gain["ci95_low"] is None:
        reasons.append("one repeat gives no confidence interval: set `repeats` to 3 or more")
    elif gain["pairs"] < 5 and _shows(gain) == "none":
        reasons.append(f"{gain['pairs']} repeats are too few for a conclusion: more `repeats` narrow the interval")
    because = f": {'; '.join(reasons)}" if reasons else ""
    shows = _shows(gain)
    if shows == "up":
        return f"Distillation **helped**: {text}."
    if shows == "down":
        return (f"Distillation **hurt**: {text}{because or ': this recipe does not suit this data'}; "
                "`kdflow search` chooses one on validation.")
    return f"Distillation had **no demonstrated effect**: {text}{because}."


def _unlabeled_recommendation(m: dict) -> str | None:
    """With images without labels: soft targets, pseudo-labels, or neither? None when neither
    student that uses them shows a gain (the usual answer then applies)."""
    if PSEUDO not in m:
        return None
    extra, soft, kd = (_shows(m[name]) for name in ("extra_images_gain", "soft_gain", "kd_gain"))
    if soft == "up":
        return ("**distill with the images without labels**: the soft targets add accuracy beyond the teacher's "
                "hard labels on the same images (distilled − pseudo-labelled CI above zero)"
                + (", and the distilled students beat the scratch students (KD gain CI above zero)." if kd == "up"
                   else "."))
    if extra == "up" and soft == "down":
        return ("**pseudo-label the images without labels** (`alpha: 1`): the teacher's hard labels on them beat the "
                "scratch students (CI above zero), and the soft targets cost accuracy on top (CI below zero).")
    if extra == "up" or kd == "up":
        return ("**use the images without labels**: " + ("the pseudo-labelled" if extra == "up" else "the distilled")
                + " students beat the scratch students (CI above zero); the soft targets add nothing the repeats "
                "can tell from noise beyond the teacher's hard labels, so pseudo-labels (`alpha: 1`) are the simpler "
                "choice; the recipe search chooses alpha on validation.")
    return None


def recommendation(m: dict) -> str:
    """The plain answer to "distill, augment, or both?" from the three paired comparisons (and,
    with images without labels, "soft targets or pseudo-labels?" first)."""
    if (unlabeled := _unlabeled_recommendation(m)) is not None:
        return unlabeled
    kd, augment, both = (_shows(m[name]) for name in ("kd_gain", "augment_gain", "combined_gain"))
    if augment == "down" and both != "up":
        return ("**no views: train on the images as they are** (`views.count: 0`, or a smaller `views.shift`): on "
                "this data the augmented views hurt the scratch students (augmentation CI below zero)"
                + ("; distillation helps on the same views (KD gain CI above zero), so try it without them."
                   if kd == "up" else "."))
    if kd == "up":
        return ("**distill on the augmented views**: the teacher adds accuracy beyond what augmentation "
                "gives the same student (KD gain CI above zero).")
    if kd == "down":
        if augment == "up":
            return ("**augment, do not distill**: on the same views the distilled students are worse than the "
                    "scratch students (KD gain CI below zero); train the student from scratch on the views.")
        return ("**do not distill: train the student from scratch**: the distilled students are worse than the "
                "scratch students on the same views (KD gain CI below zero), and augmentation shows no gain.")
    if augment == "up":
        return ("**augment**: augmentation alone helps (CI above zero) and distillation shows no gain beyond it "
                "(its CI includes zero); the scratch students on the views are as good, without a teacher.")
    if both == "up":
        return ("**distill on the augmented views**: together they beat the plain student (CI above zero), "
                "though neither alone shows a gain that the repeats can tell from noise.")
    return ("**no demonstrated effect**: neither distillation nor augmentation beats the plain student beyond "
            "the noise of the repeats; more repeats (`repeats`) or another recipe may tell.")


def _reliability_figure(comparison: Comparison, path: Path) -> None:
    """Before (left) and after (right) temperature scaling, every model's repeat 0."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt
    from scipy.special import softmax

    fig, axes = plt.subplots(1, 2, figsize=(11, 5), sharey=True)
    for ax, calibrated in zip(axes, (False, True)):
        ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfect calibration")
        for role in ROLES:
            r = comparison.metrics[role]
            logits = comparison.predictions[role] / (r["temperature"] if calibrated else 1.0)
            bins = [b for b in calibration_bins(softmax(logits, axis=1), comparison.labels) if b["count"]]
            ece = r["ece_calibrated"] if calibrated else r["ece"]
            line, = ax.plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins],
                            label=f"{TITLES[role]} (ECE {ece:.3f})")
            # Marker area grows with the bin's sample count: sparse low-confidence bins are noisy.
            ax.scatter([b["confidence"] for b in bins], [b["accuracy"] for b in bins], color=line.get_color(),
                       s=[12 + 120 * np.sqrt(b["count"] / len(comparison.labels)) * 4 for b in bins], zorder=3)
        title = "after temperature scaling (T from validation)" if calibrated else "as trained"
        ax.set(xlabel="confidence (top-1 probability)", xlim=(0, 1), ylim=(0, 1), title=title)
        ax.legend(loc="upper left", fontsize="small")
    axes[0].set_ylabel("accuracy")
    fig.suptitle("Reliability diagram (test split, repeat 0); marker area ~ samples in the bin")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _confusion_figure(comparison: Comparison, role: str, class_names: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import ConfusionMatrixDisplay

    size = max(4.5, 0.45 * len(class_names) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ConfusionMatrixDisplay.from_predictions(
        comparison.labels, comparison.predictions[role].argmax(axis=1), labels=range(len(class_names)),
        display_labels=class_names, ax=ax, colorbar=False, include_values=len(class_names) <= 20)
    ax.set_title(f"Confusion matrix: {TITLES[role]} (test split)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
