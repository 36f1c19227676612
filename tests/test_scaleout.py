"""Growing past one run on one device: resumable training, tf.distribute, remote storage.
Real stages, real `dvc` CLI, real TensorFlow (tiny settings)."""

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import yaml

from conftest import ROOT, copy_repo, minimal_params, run_stage, sh, stages_run

pytestmark = pytest.mark.e2e


def set_params(repo, section, **values):
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params[section].update(values)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def distill_outputs(repo):
    files = [*sorted((repo / "models/student_distilled_repeats").glob("*.keras")),
             repo / "metrics/distill.json", *sorted((repo / "dvclive/distill").rglob("*.tsv"))]
    return {str(p.relative_to(repo)): p.read_bytes() for p in files}


def test_killed_stage_resumes_at_its_last_epoch_and_ends_with_the_same_weights(pipeline_repo, tmp_path):
    repo = copy_repo(pipeline_repo, tmp_path)
    assert yaml.safe_load((repo / "params.yaml").read_text())["views"]["count"] > 0  # on augmented views
    # Long enough to be killed mid-run; patience > epochs keeps early stopping's state in play
    # (best weights restored at the end) without stopping.
    set_params(repo, "train_student", epochs=8, batch_size=16, patience=20)
    env = {**os.environ, "PATH": f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ['PATH']}",
           "PYTHONUNBUFFERED": "1", "DVC_NO_ANALYTICS": "1"}
    process = subprocess.Popen(["dvc", "repro", "distill"], cwd=repo, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, start_new_session=True)
    seen = []
    for line in process.stdout:  # kill during epoch 4 of the second repeat
        seen.append(line)
        if line.startswith("Epoch 4/8") and any("repeat 2/2" in s for s in seen):
            break
    else:
        pytest.fail("distill ended before it could be killed:\n" + "".join(seen[-30:]))
    os.killpg(process.pid, signal.SIGKILL)  # dvc and the stage process, no cleanup at all
    process.wait(timeout=30)
    assert not (repo / "models/student_distilled.keras").exists()
    assert len(list((repo / ".kdflow/runs/distill").glob("*/repeat_*.npz"))) == 2

    resumed = sh(["dvc", "repro", "distill"], repo).stdout
    assert "student_distilled: finished from the checkpoint" in resumed  # repeat 1 was done
    assert "student_distilled: resuming at epoch 4/8 from the checkpoint" in resumed, resumed[-3000:]
    assert "Epoch 1/8" not in resumed.split("repeat 2/2")[1]  # the second repeat did not start over
    assert not list((repo / ".kdflow/runs/distill").glob("*/*"))  # checkpoints removed on success
    after_resume = distill_outputs(repo)

    sh(["dvc", "repro", "--force", "distill"], repo)  # the same run, never interrupted
    assert distill_outputs(repo) == after_resume  # weights, metrics and curves, bit for bit


DISTRIBUTED_FIT = ROOT / "tests/distributed_fit.py"


def distributed_fit(strategy):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])}
    result = subprocess.run([sys.executable, str(DISTRIBUTED_FIT), strategy], capture_output=True, text=True,
                            timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    line = next(line for line in result.stdout.splitlines() if line.startswith("RESULT "))
    return json.loads(line.removeprefix("RESULT "))


def test_mirrored_strategy_trains_on_two_cpu_replicas_close_to_one_device():
    single, mirrored = distributed_fit("default"), distributed_fit("mirrored")
    assert single["replicas_in_sync"] == 1 and mirrored["replicas_in_sync"] == 2
    # The training step ran on both replicas (the loss is traced once per replica).
    assert {0, 1} <= set(mirrored["traced_on"])
    assert 1 not in single["traced_on"]
    # Same data, seeds and global batches: the result differs only by float round-off and the
    # replicas' own dropout masks; a wrongly reduced loss (mean per replica, not / global
    # batch) would show as a different loss scale.
    assert abs(single["summary"]["loss"] - mirrored["summary"]["loss"]) < 0.01
    assert single["summary"]["val_accuracy"] == pytest.approx(mirrored["summary"]["val_accuracy"], abs=0.05)
    diff = max(np.max(np.abs(np.array(a) - np.array(b))) for a, b in zip(single["weights"], mirrored["weights"]))
    assert diff < 0.01, diff


def test_mirrored_stage_and_unavailable_multi_worker(tmp_path):
    project = tmp_path / "p"
    project.mkdir()
    params = minimal_params(repeats=1, runtime={"strategy": "mirrored", "cpu_replicas": 2})
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    assert run_stage("prepare", project).returncode == 0
    result = run_stage("train_scratch", project)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "runtime: mirrored strategy, 2 replicas" in result.stdout
    assert (project / "models/student_scratch.keras").exists()

    params["runtime"] = {"strategy": "multi_worker"}
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    result = run_stage("train_teacher", project)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "runtime.strategy = multi_worker: not available" in result.stderr
    assert "tensorflow/tensorflow#72388" in result.stderr
    assert not (project / "models/teacher.keras").exists()


def test_push_to_a_remote_then_a_fresh_clone_pulls_and_reruns_nothing(pipeline_repo, tmp_path):
    repo = copy_repo(pipeline_repo, tmp_path)
    storage = tmp_path / "storage"
    sh(["dvc", "remote", "add", "-d", "shared", str(storage)], repo)
    sh(["git", "commit", "-qam", "add a DVC remote"], repo)
    pushed = sh(["dvc", "push"], repo)
    assert storage.exists() and any(storage.rglob("*")), pushed.stdout

    clone = tmp_path / "clone"
    sh(["git", "clone", "-q", str(repo), str(clone)], tmp_path)
    assert not (clone / "models/teacher.keras").exists()  # only git-tracked files so far
    sh(["dvc", "pull"], clone)
    for path in ("models/teacher.keras", "models/student_distilled.keras", "data/soft_targets", "export"):
        assert (clone / path).exists(), path
    assert (clone / "models/teacher.keras").read_bytes() == (repo / "models/teacher.keras").read_bytes()
    repro = sh(["dvc", "repro"], clone)
    assert stages_run(repro.stdout + repro.stderr) == set(), repro.stdout[-2000:]
    assert "Data and pipelines are up to date" in sh(["dvc", "status"], clone).stdout
