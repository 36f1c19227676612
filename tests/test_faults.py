"""Faults and bad input through the real stage scripts, one case per failure type: each exits
non-zero with one line that names the problem, writes nothing, and leaves the project usable.
The rules behind each message are tested in-process (test_params, test_sources, test_data,
test_training); here it is the stage wrapper's job that is checked. Input checks run before
TensorFlow starts; the cases that need trained artifacts work on copies of the session's tiny
pipeline (conftest.pipeline_repo)."""

import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import yaml

from conftest import copy_repo, minimal_params, run_stage, stage_env

pytestmark = pytest.mark.e2e


def assert_clean_failure(result, *fragments):
    assert result.returncode == 1, result.stdout[-2000:] + result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("kdflow ")]
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert "Traceback" not in result.stdout + result.stderr


def write_params(path, raw):
    (path / "params.yaml").write_text(yaml.safe_dump(raw))


def test_bad_param_is_one_line_before_tensorflow_loads(tmp_path):
    write_params(tmp_path, minimal_params(alpha=1.5))
    result = run_stage("distill", tmp_path)
    assert_clean_failure(result)
    assert result.stderr.strip() == (
        "kdflow distill: error: params.yaml: alpha = 1.5: Input should be less than or equal to 1")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]  # nothing written, no log


def test_bad_data_file_names_the_file_and_the_problem(tmp_path):
    np.savez(tmp_path / "user.npz", x_train=np.zeros((12, 6, 6), np.uint8), y_train=np.arange(11))
    write_params(tmp_path, minimal_params(data={"name": "npz", "path": "user.npz"}))
    assert_clean_failure(run_stage("prepare", tmp_path), "data.path = user.npz",
                         "x_train has 12 samples but y_train has shape (11,)")
    assert not (tmp_path / "data").exists()


def test_missing_upstream_artifact_names_the_stage_to_run(tmp_path):
    write_params(tmp_path, minimal_params())
    assert_clean_failure(run_stage("train_teacher", tmp_path),
                         "data/prepared/meta.json is missing: run `dvc repro prepare` first")
    assert not (tmp_path / "models").exists()


def test_damaged_teacher_names_the_stage_to_rerun(pipeline_repo, tmp_path):
    project = copy_repo(pipeline_repo, tmp_path)
    teacher = project / "models/teacher.keras"
    teacher.write_bytes(teacher.read_bytes()[:500])
    shutil.rmtree(project / "data/soft_targets")
    assert_clean_failure(run_stage("soft_targets", project), "models/teacher.keras could not be loaded",
                         "rerun `dvc repro --force train_teacher`")
    assert not (project / "data/soft_targets").exists()


def test_soft_targets_of_other_data_are_refused(pipeline_repo, tmp_path):
    project = copy_repo(pipeline_repo, tmp_path)
    (project / "models/student_distilled.keras").unlink()
    meta = project / "data/soft_targets/meta.json"
    meta.write_text(meta.read_text().replace('"data_hash": "', '"data_hash": "0'))
    assert_clean_failure(run_stage("distill", project),
                         "computed on other prepared data: rerun `dvc repro soft_targets`")
    assert not (project / "models/student_distilled.keras").exists()


def test_diverging_training_stops_without_saving(tmp_path):
    # Finite but absurdly scaled pixels overflow float32 in the first layer: the loss is NaN at once.
    y = np.repeat(np.array([0, 1, 2]), 4)
    np.savez(tmp_path / "user.npz", x_train=np.full((12, 6, 6), 1e38, dtype=np.float32), y_train=y)
    write_params(tmp_path, minimal_params(data={"name": "npz", "path": "user.npz", "val_fraction": 0.2,
                                                "test_fraction": 0.2}))
    assert run_stage("prepare", tmp_path).returncode == 0
    failed = run_stage("train_teacher", tmp_path)
    assert_clean_failure(failed, "train_teacher.learning_rate=0.003: training diverged (loss is NaN/inf)",
                         "No model was saved")
    # TensorFlow started and trained: its native start-up and warning lines stay off the terminal
    assert len(failed.stderr.strip().splitlines()) == 1, failed.stderr
    assert not (tmp_path / "models/teacher.keras").exists()
    assert not (tmp_path / "metrics").exists()


def start_stage(name, cwd):
    return subprocess.Popen([sys.executable, "-m", f"stages.{name}"], cwd=cwd, env=stage_env(PYTHONUNBUFFERED="1"),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_for_epoch(process, epoch=2, timeout=120):
    deadline = time.monotonic() + timeout
    seen = []
    for line in process.stdout:
        seen.append(line)
        if line.startswith(f"Epoch {epoch}/"):
            return
        assert time.monotonic() < deadline, "".join(seen[-20:])
    pytest.fail("stage ended before it could be interrupted:\n" + "".join(seen[-20:]))


# The stop signals, each once: Ctrl-C (SIGINT) and `kill` / `dvc queue kill` / a CI time-out
# (SIGTERM). SIGKILL, which leaves no chance to clean up, is test_scaleout's resume test.
@pytest.mark.parametrize("stage, outputs, stop", [
    ("distill", ["models/student_distilled.keras", "models/student_distilled_repeats", "dvclive/distill"],
     signal.SIGINT),
    ("train_scratch", ["models/student_scratch.keras", "models/student_scratch_repeats", "dvclive/train_scratch"],
     signal.SIGTERM),
])
def test_interrupted_training_leaves_no_output(pipeline_repo, tmp_path, stage, outputs, stop):
    project = copy_repo(pipeline_repo, tmp_path)
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["train_student"].update(epochs=200, batch_size=16)  # long enough to be stopped mid-run
    write_params(project, params)
    for out in outputs:  # the committed run's outputs: the stopped run must not leave any
        path = project / out
        path.unlink() if path.is_file() else shutil.rmtree(path)

    process = start_stage(stage, project)
    wait_for_epoch(process)
    process.send_signal(stop)
    rest = process.communicate(timeout=60)[0]
    assert process.returncode == 128 + stop, rest[-2000:]
    assert f"kdflow {stage}: interrupted, no outputs written" in rest and "Traceback" not in rest
    for out in outputs:
        assert not (project / out).exists(), out
    # the handler removed this run's temp files
    leftovers = [p.name for folder in ("models", "dvclive") if (project / folder).exists()
                 for p in (project / folder).glob(".*.tmp")]
    assert leftovers == []


def run_limited(stage, cwd, blocks):
    """``stage`` as a user runs it, under a file-size limit of ``blocks`` KiB (`ulimit -f`): every
    write past it fails as on a full disk."""
    return subprocess.run(["bash", "-c", f"ulimit -f {blocks}; exec {sys.executable} -m stages.{stage}"], cwd=cwd,
                          env=stage_env(), capture_output=True, text=True, timeout=300)


def test_a_full_disk_is_named_as_one(pipeline_repo, tmp_path):
    """A write that fails for lack of room is one line naming what failed, whichever writer hit it:
    kdflow's own output, or DVC's state database, which dvclive opens (SQLite's "disk I/O error")."""
    (tmp_path / "fresh").mkdir()
    write_params(tmp_path / "fresh", minimal_params())
    result = run_limited("prepare", tmp_path / "fresh", 256)
    assert_clean_failure(result)
    assert result.stderr.strip() == (
        "kdflow prepare: error: a file-size limit was hit (File too large) writing data/prepared/train/x-00000.npy; "
        "free space or raise the limit, then rerun: this stage wrote no outputs, and nothing you had is lost")
    assert list((tmp_path / "fresh/data").iterdir()) == []

    project = copy_repo(pipeline_repo, tmp_path)
    outputs = ["models/student_distilled.keras", "models/student_distilled_repeats", "dvclive/distill"]
    for out in outputs:
        path = project / out
        path.unlink() if path.is_file() else shutil.rmtree(path)
    result = run_limited("distill", project, 16)
    assert_clean_failure(result, "kdflow distill: error: the disk is full or a file-size limit was hit (SQLite: "
                                 "disk I/O error) writing DVC's state database in ", "(opened by dvclive) while "
                                 "writing models/student_distilled_repeats; free space or raise the limit")
    assert not [out for out in outputs if (project / out).exists()]
    assert [p.name for folder in ("models", "dvclive") for p in (project / folder).glob(".*.tmp")] == []
