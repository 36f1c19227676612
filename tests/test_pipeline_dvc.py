"""End to end with the real `dvc` CLI in a temporary git repository (tiny epochs)."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import ROOT

PROJECT_FILES = ["dvc.yaml", "params.yaml", "kdflow", "stages", ".dvc/config", ".dvcignore", ".gitignore"]
ALL_STAGES = {"prepare", "train_teacher", "soft_targets", "distill", "train_scratch", "evaluate"}


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


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    repo = tmp_path_factory.mktemp("kdflow_repo")
    for name in PROJECT_FILES:
        src, dst = ROOT / name, repo / name
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["teacher"] = {"arch": "spec", "spec": {"conv_filters": [8], "dense_units": [32]}}
    params["repeats"] = 2
    for section in ("train_teacher", "train_student"):
        params[section].update(epochs=1, batch_size=128)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    sh(["git", "init", "-q", "-b", "main"], repo)
    sh(["git", "add", "-A"], repo)
    sh(["git", "commit", "-qm", "init"], repo)
    return repo


def metrics_bytes(repo):
    return {p.name: p.read_bytes() for p in sorted((repo / "metrics").glob("*.json"))}


def test_repro_then_alpha_experiment_reruns_only_what_depends_on_alpha(repo):
    first = sh(["dvc", "repro"], repo)
    assert stages_run(first.stdout) == ALL_STAGES
    baseline = metrics_bytes(repo)
    assert set(baseline) == {"evaluate.json", "train_teacher.json", "distill.json", "train_scratch.json"}
    evaluate = json.loads(baseline["evaluate.json"])
    assert set(evaluate) == {"teacher", "student_distilled", "student_scratch", "kd_gain", "gap_closed"}
    assert evaluate["kd_gain"]["pairs"] == 2
    assert evaluate["kd_gain"]["mean"] == pytest.approx(
        evaluate["student_distilled"]["accuracy_mean"] - evaluate["student_scratch"]["accuracy_mean"], abs=1e-5)
    assert evaluate["kd_gain"]["ci95_low"] <= evaluate["kd_gain"]["mean"] <= evaluate["kd_gain"]["ci95_high"]
    assert sorted(p.name for p in (repo / "models/student_distilled_repeats").iterdir()) == \
        ["repeat_0.keras", "repeat_1.keras"]

    # Reproducibility: a forced rerun of every stage gives byte-identical metrics files.
    forced = sh(["dvc", "repro", "--force"], repo)
    assert stages_run(forced.stdout) == ALL_STAGES
    assert metrics_bytes(repo) == baseline

    sh(["git", "add", "-A"], repo)
    sh(["git", "commit", "-qm", "baseline"], repo)
    assert sh(["dvc", "status", "-q"], repo, check=False).returncode == 0

    committed_alpha = yaml.safe_load((repo / "params.yaml").read_text())["alpha"]
    assert committed_alpha != 0.9
    exp = sh(["dvc", "exp", "run", "-S", "alpha=0.9"], repo)
    output = exp.stdout + exp.stderr
    assert stages_run(output) == {"distill", "evaluate"}
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
