"""End to end with the real `dvc` CLI in a temporary git repository (tiny epochs)."""

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from benchmarks.run import copy_project

ALL_ROLES = ("teacher", "student_distilled", "student_scratch")
ALL_STAGES = {"prepare", "train_teacher", "soft_targets", "distill", "train_scratch", "export", "evaluate"}
# What depends on alpha / temperature: the distilled student and what consumes it.
ALPHA_STAGES = {"distill", "export", "evaluate"}


def sh(args, cwd, check=True):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "DVC_NO_ANALYTICS": "1", "GIT_AUTHOR_NAME": "kdflow-test", "GIT_AUTHOR_EMAIL": "test@kdflow",
           "GIT_COMMITTER_NAME": "kdflow-test", "GIT_COMMITTER_EMAIL": "test@kdflow"}
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    if check and result.returncode != 0:
        pytest.fail(f"{' '.join(args)} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def stages_run(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([a-z_]+)'", output))


def stages_skipped(output: str) -> set[str]:
    return set(re.findall(r"Stage '([a-z_]+)' didn't change, skipping", output))


def make_repo(repo: Path, commit: bool = True, **param_updates) -> Path:
    """The project's files in a fresh git repository, with tiny training settings."""
    copy_project(repo)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["teacher"].update(arch="spec", spec={"conv_filters": [8], "dense_units": [32]})
    params["repeats"] = 2
    for section in ("train_teacher", "train_student"):
        params[section].update(epochs=1, batch_size=128)
    for key, value in param_updates.items():
        params[key].update(value) if isinstance(value, dict) else params.__setitem__(key, value)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    sh(["git", "init", "-q", "-b", "main"], repo)
    if commit:
        sh(["git", "add", "-A"], repo)
        sh(["git", "commit", "-qm", "init"], repo)
    return repo


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    return make_repo(tmp_path_factory.mktemp("kdflow_repo"))


def metrics_bytes(repo):
    return {p.name: p.read_bytes() for p in sorted((repo / "metrics").glob("*.json"))}


def curve_bytes(repo):
    """The dvclive training curves (must reproduce like the metrics: no timestamps)."""
    return {str(p.relative_to(repo)): p.read_bytes() for p in sorted((repo / "dvclive").rglob("*.tsv"))}


def test_repro_then_alpha_experiment_reruns_only_what_depends_on_alpha(repo):
    # `export` consumes the distilled student, so it reruns with it; nothing upstream does.
    first = sh(["dvc", "repro"], repo)
    assert stages_run(first.stdout) == ALL_STAGES
    baseline = metrics_bytes(repo)
    assert set(baseline) == {"evaluate.json", "train_teacher.json", "distill.json", "train_scratch.json", "export.json"}
    evaluate = json.loads(baseline["evaluate.json"])
    assert set(evaluate) == {"teacher", "student_distilled", "student_scratch", "kd_gain", "gap_closed",
                             "compression"}
    assert evaluate["kd_gain"]["pairs"] == 2
    assert evaluate["kd_gain"]["mean"] == pytest.approx(
        evaluate["student_distilled"]["accuracy_mean"] - evaluate["student_scratch"]["accuracy_mean"], abs=1e-5)
    assert evaluate["kd_gain"]["ci95_low"] <= evaluate["kd_gain"]["mean"] <= evaluate["kd_gain"]["ci95_high"]
    assert sorted(p.name for p in (repo / "models/student_distilled_repeats").iterdir()) == \
        ["repeat_0.keras", "repeat_1.keras"]

    # Reproducibility: a forced rerun of every stage gives byte-identical metrics files and curves.
    curves = curve_bytes(repo)
    assert len(curves) >= 3 * 6
    forced = sh(["dvc", "repro", "--force"], repo)
    assert stages_run(forced.stdout) == ALL_STAGES
    assert metrics_bytes(repo) == baseline
    assert curve_bytes(repo) == curves

    sh(["git", "add", "-A"], repo)
    sh(["git", "commit", "-qm", "baseline"], repo)
    assert sh(["dvc", "status", "-q"], repo, check=False).returncode == 0

    committed_alpha = yaml.safe_load((repo / "params.yaml").read_text())["alpha"]
    assert committed_alpha != 0.9
    exp = sh(["dvc", "exp", "run", "-S", "alpha=0.9"], repo)
    output = exp.stdout + exp.stderr
    assert stages_run(output) == ALPHA_STAGES
    assert stages_skipped(output) == {"prepare", "train_teacher", "soft_targets", "train_scratch"}

    params_diff = json.loads(sh(["dvc", "params", "diff", "--json"], repo).stdout)
    assert params_diff["params.yaml"]["alpha"]["old"] == committed_alpha
    assert params_diff["params.yaml"]["alpha"]["new"] == 0.9
    assert set(params_diff["params.yaml"]) == {"alpha"}

    diff = json.loads(sh(["dvc", "metrics", "diff", "--json"], repo).stdout)
    changed = {(path, key) for path, keys in diff.items() for key in keys}
    assert ("metrics/evaluate.json", "student_distilled.loss_mean") in changed
    assert ("metrics/distill.json", "repeat_0.loss") in changed
    assert not any(key.startswith(("teacher.", "student_scratch.")) for _, key in changed)
    assert "metrics/train_teacher.json" not in diff and "metrics/train_scratch.json" not in diff

    shown = json.loads(sh(["dvc", "exp", "show", "--json"], repo).stdout)
    text = json.dumps(shown)
    assert '"alpha": 0.9' in text and "student_distilled" in text


# The tests below use the outputs and the committed baseline left by the test above
# (module-scoped repo, run in file order).

def test_plots_report_and_evaluation_metrics(repo):
    evaluate = json.loads((repo / "metrics/evaluate.json").read_text())
    for role in ("teacher", "student_distilled", "student_scratch"):
        r = evaluate[role]
        assert {"ece", "ece_mean", "loss", "per_class_accuracy", "params", "size_bytes"} <= set(r)
        assert len(r["per_class_accuracy"]) == 10 and 0 <= r["ece"] <= 1
    assert 0 <= evaluate["student_distilled"]["teacher_agreement_mean"] <= 1
    assert evaluate["compression"]["param_ratio"] == pytest.approx(
        evaluate["teacher"]["params"] / evaluate["student_distilled"]["params"], rel=1e-3)

    summary = (repo / "reports/summary.md").read_text()
    for row in ("| teacher |", "| distilled student |", "| scratch student |", "**KD gain**", "alpha="):
        assert row in summary
    for image in ("reliability", "confusion_teacher", "confusion_student_distilled", "confusion_student_scratch"):
        png = repo / f"reports/figures/{image}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"figures/{image}.png" in summary
    export = json.loads((repo / "metrics/export.json").read_text())
    assert {"keras", "tflite_float32", "tflite_int8", "int8_accuracy_drop"} <= set(export)
    assert export["tflite_int8"]["size_bytes"] < export["tflite_float32"]["size_bytes"]
    assert "**Deployment**" in summary and "TFLite int8" in summary
    for name in ("student_float32.tflite", "student_int8.tflite", "saved_model/saved_model.pb", "latency.json"):
        assert (repo / "export" / name).is_file(), name
    latency = json.loads((repo / "reports/latency.json").read_text())
    assert all(latency[role]["batch_1"] > 0 and latency[role]["batch_256"] > 0 for role in ALL_ROLES)

    shown = json.loads(sh(["dvc", "plots", "show", "--json"], repo).stdout)["data"]
    assert {"val_accuracy", "learning_rate", "distill_loss_terms"} <= set(shown)
    assert sum("confusion" in plot_id for plot_id in shown) == 3
    # One page, three curves: DVC shortens the file names to what differs between them.
    sources = {d["filename"].split("/")[0] for d in shown["val_accuracy"][0]["content"]["data"]["values"]}
    assert sources == {"train_teacher", "distill", "train_scratch"}
    sh(["dvc", "plots", "show", "-o", "plots_html"], repo)
    html = (repo / "plots_html/index.html").read_text()
    assert "Confusion matrix, distilled student" in html and "Validation accuracy per epoch" in html

    exp_json = json.dumps(json.loads(sh(["dvc", "exp", "show", "--json"], repo).stdout))
    assert '"ece_mean"' in exp_json and '"compression"' in exp_json


def without_nulls(tree):
    if isinstance(tree, dict):
        return {k: without_nulls(v) for k, v in tree.items() if v is not None}
    return tree


def queue_status(repo) -> dict[str, str]:
    """Experiment name -> status, from `dvc queue status`."""
    rows = {}
    for line in sh(["dvc", "queue", "status"], repo).stdout.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[-1] in {"Queued", "Running", "Success", "Failed"}:
            rows[parts[1]] = parts[-1]
    return rows


def test_queued_grid_never_retrains_teacher_or_scratch(repo):
    sh(["git", "checkout", "--", "."], repo)
    sh(["dvc", "checkout", "-q"], repo)
    sh(["dvc", "exp", "run", "--queue", "-S", "alpha=0.1,0.9", "-S", "temperature=2,8"], repo)
    sh(["dvc", "queue", "start", "-j", "2"], repo)
    deadline = time.monotonic() + 600
    while True:
        status = queue_status(repo)
        if status and all(s in {"Success", "Failed"} for s in status.values()):
            break
        assert time.monotonic() < deadline, f"queue did not finish: {status}"
        time.sleep(3)
    assert len(status) == 4 and set(status.values()) == {"Success"}, status
    for name in status:
        log = sh(["dvc", "queue", "logs", name], repo).stdout
        assert stages_run(log) == ALPHA_STAGES, name
        assert {"train_teacher", "train_scratch", "soft_targets", "prepare"} <= stages_skipped(log), name

    changed = json.loads(sh(["dvc", "exp", "show", "--only-changed", "--json"], repo).stdout)
    grid = {}
    for baseline in changed:
        for exp in (baseline.get("experiments") or []):
            for rev in exp["revs"]:
                if rev.get("name") in status:  # not the alpha=0.9 experiment of the test above
                    p = rev["data"]["params"]["params.yaml"]["data"]
                    grid[(p["alpha"], p["temperature"])] = rev["data"]["metrics"]["metrics/evaluate.json"]["data"]
    assert set(grid) == {(0.1, 2), (0.1, 8), (0.9, 2), (0.9, 8)}

    # Two at a time did not clobber anything: a queued result equals the same experiment run
    # alone in the workspace, bit for bit.
    sh(["dvc", "exp", "run", "-S", "alpha=0.1", "-S", "temperature=2"], repo)
    alone = json.loads((repo / "metrics/evaluate.json").read_text())
    assert without_nulls(alone) == without_nulls(grid[(0.1, 2)])  # `exp show` leaves nulls out

    chosen = sorted(status)[0]
    sh(["dvc", "exp", "apply", chosen], repo)
    applied = yaml.safe_load((repo / "params.yaml").read_text())
    assert (applied["alpha"], applied["temperature"]) in grid


def test_own_npz_data_and_own_teacher_run_end_to_end(tmp_path):
    """A user's dataset (string labels, 3 classes, RGB) and a user's .keras teacher, tracked
    with `dvc add`: only params change; replacing the data file reruns the pipeline."""
    import keras
    import numpy as np

    repo = tmp_path / "byo"
    repo.mkdir()
    rng = np.random.default_rng(0)
    labels = np.repeat(np.array(["ant", "bee", "cow"]), 20)
    x = rng.integers(0, 80, size=(len(labels), 10, 10, 3), dtype=np.uint8)
    for i, label in enumerate(labels):
        x[i, :, "abc".index(label[0])] = 255
    (repo / "inputs").mkdir()
    np.savez(repo / "inputs/mine.npz", x_train=x, y_train=labels)
    inputs = keras.Input((10, 10, 3))
    outputs = keras.layers.Dense(3, activation="softmax")(keras.layers.Flatten()(inputs))
    keras.Model(inputs, outputs).save(repo / "inputs/teacher.keras")
    make_repo(repo, commit=False, data={"name": "npz", "path": "inputs/mine.npz", "val_fraction": 0.2, "test_fraction": 0.2},
              teacher={"source": "file", "path": "inputs/teacher.keras"})
    sh(["dvc", "add", "inputs/mine.npz", "inputs/teacher.keras"], repo)
    sh(["git", "add", "-A"], repo)
    sh(["git", "commit", "-qm", "track inputs"], repo)

    first = sh(["dvc", "repro"], repo)
    assert stages_run(first.stdout) == ALL_STAGES
    assert "removed the final softmax" in first.stdout + first.stderr
    meta = json.loads((repo / "data/prepared/meta.json").read_text())
    assert meta["class_names"] == ["ant", "bee", "cow"] and meta["input_shape"] == [10, 10, 3]
    evaluate = json.loads((repo / "metrics/evaluate.json").read_text())
    assert set(evaluate["teacher"]["per_class_accuracy"]) == {"ant", "bee", "cow"}
    assert json.loads((repo / "metrics/train_teacher.json").read_text())["epochs_run"] == 0  # not trained

    # New data under the same name: `dvc add` records it and everything downstream reruns.
    np.savez(repo / "inputs/mine.npz", x_train=x[::-1].copy(), y_train=labels[::-1].copy())
    sh(["dvc", "add", "inputs/mine.npz"], repo)
    again = sh(["dvc", "repro"], repo)
    assert "prepare" in stages_run(again.stdout)
