"""Rank DVC experiments by **validation**: the recipe table of a `dvc exp run --queue` sweep.

Reads `dvc exp show --json` (the workspace, its baseline commit and their experiments) and,
for each, the per-repeat validation accuracies that `distill`, `train_scratch` and
`train_plain` write. The paired validation gains use the same seeds as the test ones in
metrics/evaluate.json; the test gain is shown beside them for the record, never used to rank.

Recipes are ranked by the mean paired validation KD gain (ties: by its CI's lower bound). No
distillation (alpha = 1) trains exactly the scratch students, so its gain is exactly 0: a
recipe ranks above it only with a mean gain above zero on validation (why not the lower bound:
docs/results.md). With images without labels, alpha = 1 trains the pseudo-labelled students
instead, ranked by their own gain over the scratch students like any recipe. When a search
varies what the scratch students train on, the settings are chosen on them first (``choose``).

Written here because DVC shows the metrics of each experiment but not paired statistics over them.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass

from kdflow.core import KdflowError
from kdflow.core.paths import MODEL_ROLES, metrics_file
from kdflow.search.grid import Distilled, flat


def paired_gain(better: list[float], baseline: list[float]) -> dict:
    """kdflow.evaluate.metrics.paired_gain, imported when used (SciPy: `kdflow check` stays quick)."""
    from kdflow.evaluate.metrics import paired_gain as gain

    return gain(better, baseline)

# role -> the metrics file of the stage that trains it (as `dvc exp show` names it)
STUDENT_METRICS = {role: str(metrics_file(MODEL_ROLES[f"student_{role}"]))
                   for role in ("distilled", "scratch", "plain")}


@dataclass
class Experiment:
    name: str
    params: dict      # flattened params.yaml
    val: dict         # role -> per-repeat validation accuracies
    test_kd_gain: dict | None
    teacher_check: dict | None = None
    baseline: bool = False  # the commit the experiments branch from, not an experiment

    def val_gain(self, better: str, baseline: str) -> dict:
        return paired_gain(self.val[better], self.val[baseline])

    def val_mean(self, role: str) -> float:
        return sum(self.val[role]) / len(self.val[role])

    def kd_rank(self) -> tuple[float, float]:
        """Best first when sorted in reverse: the mean gain, then the CI's lower bound (the mean with one repeat)."""
        gain = self.val_gain("distilled", "scratch")
        return gain["mean"], (gain["mean"] if gain["ci95_low"] is None else gain["ci95_low"])


def ranked(found: list[Experiment], by: str = "kd") -> list[Experiment]:
    """``by="kd"``: by the paired validation gain of the distilled over the scratch students
    (``Experiment.kd_rank``); ``by="scratch"``: by the scratch students' validation accuracy."""
    key = Experiment.kd_rank if by == "kd" else (lambda e: e.val_mean("scratch"))
    return sorted(found, key=key, reverse=True)  # stable: ties keep the given order


def _experiment(name: str, data: dict, baseline: bool = False) -> Experiment | None:
    metrics = data.get("metrics") or {}
    try:
        val = {role: [r["val_accuracy"] for key, r in sorted(metrics[path]["data"].items())
                      if key.startswith("repeat_")] for role, path in STUDENT_METRICS.items()}
    except KeyError:
        return None  # a failed or unfinished experiment
    evaluate = (metrics.get(str(metrics_file("evaluate"))) or {}).get("data") or {}
    return Experiment(name, flat(data["params"]["params.yaml"]["data"]), val, evaluate.get("kd_gain"),
                      evaluate.get("teacher_check"), baseline)


def experiments(show: list[dict]) -> list[Experiment]:
    """The baseline commit's results and every finished experiment of `dvc exp show --json`
    (queued, running and failed ones are left out)."""
    found = []
    for base in show:
        if base["rev"] == "workspace":
            continue
        if (baseline := _experiment(base.get("name") or base["rev"][:7], base["data"], baseline=True)) is not None:
            found.append(baseline)
        for exp in base.get("experiments") or []:
            for rev in exp.get("revs") or []:
                # A queued or running experiment has no commit time yet; a running one shows
                # the metrics of whatever its stages wrote so far.
                if rev.get("error") or not (rev.get("data") or {}).get("timestamp"):
                    continue
                if (e := _experiment(rev.get("name") or rev["rev"][:7], rev["data"])) is not None:
                    found.append(e)
    return found


def table(found: list[Experiment], by: str = "kd", ordered: bool = False) -> str:
    """Markdown table ranked by validation: ``by="kd"`` the paired gain of the distilled over
    the scratch students (both on the views), ``by="scratch"`` the scratch students' accuracy;
    ``ordered``: in the order given."""
    if not found:
        raise KdflowError("no finished experiments: run some with `dvc exp run --queue -S ...` and `dvc queue start`")
    # "changed params" are against the commit the experiments branch from, if it is among them
    baseline = next((e.params for e in found if e.baseline), found[0].params)
    lines = ["| experiment | changed params | val distilled | val scratch (views) | val plain "
             "| val KD gain [95% CI] | test KD gain (not used to rank) |", "|---|---|---|---|---|---|---|"]
    for e in (found if ordered else ranked(found, by)):
        changed = ", ".join(f"`{k}={'null' if v is None else v}`" for k, v in e.params.items()
                            if baseline.get(k) != v) or "(baseline)"
        gain = e.val_gain("distilled", "scratch")
        ci = "" if gain["ci95_low"] is None else f" [{gain['ci95_low'] * 100:+.2f}, {gain['ci95_high'] * 100:+.2f}]"
        test = "—" if not e.test_kd_gain else f"{e.test_kd_gain['mean'] * 100:+.2f}"
        lines.append(f"| {e.name} | {changed} | {e.val_mean('distilled'):.4f} | {e.val_mean('scratch'):.4f} | "
                     f"{e.val_mean('plain'):.4f} | {gain['mean'] * 100:+.2f}{ci} | {test} |")
    return "\n".join(lines)


def exp_show() -> list[dict]:
    """`dvc exp show --json` of the project in the current directory."""
    shown = subprocess.run(["dvc", "exp", "show", "--json"], capture_output=True, text=True)
    if shown.returncode != 0:
        lines = shown.stderr.strip().splitlines()
        said = next((line for line in lines if line.startswith("ERROR")), lines[-1] if lines else "no message")
        raise KdflowError(f"`dvc exp show --json` failed: {said}")
    return json.loads(shown.stdout)


def choose(done: list[tuple[dict, Experiment]], distilled: Distilled) -> tuple[list[Experiment], list[dict] | None]:
    """The ranking to choose from, and the baseline settings chosen first when the grid varies
    what the scratch students train on (None when it does not). A recipe must not win by
    weakening its own baseline: first the setting whose scratch students are best on validation,
    with every setting whose scratch students are not clearly worse than them (``tied``: the
    paired 95% CI of the difference, over the same seeds, reaches zero); then the recipes within
    those settings are ranked by their paired validation KD gain. Without the tie a choice could
    hinge on one validation image (docs/results.md#function-matching)."""
    settings: list[dict] = []
    for recipe, _ in done:
        if distilled.baseline_part(recipe) not in settings:
            settings.append(distilled.baseline_part(recipe))
    if len(settings) == 1:
        return ranked([e for _, e in done]), None
    # every experiment of a setting trains the same scratch students: any one of them says
    scratch = {i: next(e for r, e in done if distilled.baseline_part(r) == setting).val["scratch"]
               for i, setting in enumerate(settings)}
    top = max(scratch, key=lambda i: sum(scratch[i]) / len(scratch[i]))  # ties: the first setting
    chosen = [setting for i, setting in enumerate(settings) if i == top or tied(scratch[i], scratch[top])]
    within = ranked([e for r, e in done if distilled.baseline_part(r) in chosen])
    return within + [e for e in ranked([e for _, e in done]) if e not in within], chosen


def tied(scratch: list[float], best: list[float]) -> bool:
    """Whether scratch students are not clearly worse than the best ones on validation: their
    paired difference's 95% CI reaches zero (never with one repeat, or unpaired repeats)."""
    if len(scratch) != len(best) or len(scratch) < 2:
        return scratch == best
    high = paired_gain(scratch, best)["ci95_high"]
    return high is not None and high >= 0
