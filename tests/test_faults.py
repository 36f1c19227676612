"""Faults and bad input, through the real stage scripts (and real `dvc repro`): every case exits
non-zero with one line that names the problem, writes nothing, and leaves the project usable."""

import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import yaml

from conftest import ROOT, minimal_params, run_stage


def assert_clean_failure(result, *fragments):
    assert result.returncode == 1, result.stdout[-2000:] + result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("kdflow ")]
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert "Traceback" not in result.stdout + result.stderr


def write_params(path, raw):
    (path / "params.yaml").write_text(yaml.safe_dump(raw))


def with_key(raw, dotted, value):
    """A copy of ``raw`` with ``dotted`` set (or removed when value is ...)."""
    raw = yaml.safe_load(yaml.safe_dump(raw))
    *parents, last = dotted.split(".")
    node = raw
    for key in parents:
        node = node.setdefault(key, {})
    if value is ...:
        node.pop(last)
    else:
        node[last] = value
    return raw


BAD_PARAMS = [
    ("alpha", -0.1, "greater than or equal to 0"),
    ("alpha", "0.5", "valid number"),
    ("temperature", 0, "greater than 0"),
    ("train_teacher.epochs", 0, "greater than or equal to 1"),
    ("train_student.batch_size", 2.5, "valid integer"),
    ("train_student.learning_rate", -1, "greater than 0"),
    ("train_teacher.lr_floor", 2, "less than or equal to 1"),
    ("data.val_fraction", 0.7, "less than 0.5"),
    ("repeats", 0, "greater than or equal to 1"),
    ("dkd.beta", -1, "greater than or equal to 0"),
    ("dist.gamma", "high", "valid number"),
    ("fitnet.weight", -2, "greater than or equal to 0"),
    ("data.name", "imagenet", "'mnist5k'"),
    ("student.arch", "vgg16", "'notebook_student'"),
    ("distill.method", "crd", "'kd'"),
    ("teacher.source", "url", "'train' or 'file'"),
    ("teacher", ..., "required key is missing"),
    ("train_student.patiense", 3, "unknown key"),
]


@pytest.mark.parametrize("key, value, allowed", BAD_PARAMS, ids=[f"{k}={v}" for k, v, _ in BAD_PARAMS])
def test_bad_params(tmp_path, key, value, allowed):
    write_params(tmp_path, with_key(minimal_params(), key, value))
    result = run_stage("distill", tmp_path)
    shown = key if value is ... else f"{key} = {value!r}"
    assert_clean_failure(result, "params.yaml:", shown if "unknown" not in allowed else key, allowed)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]  # nothing written
    assert (tmp_path / "logs").exists() is False


def npz_project(tmp_path, **arrays):
    np.savez(tmp_path / "user.npz", **arrays)
    raw = minimal_params(data={"name": "npz", "path": "user.npz", "val_fraction": 0.2, "test_fraction": 0.2})
    write_params(tmp_path, raw)
    return tmp_path


GOOD_X = np.zeros((12, 6, 6), dtype=np.uint8)
GOOD_Y = np.repeat(np.array([0, 1, 2]), 4)


@pytest.mark.parametrize("arrays, message", [
    ({"x_train": GOOD_X, "y_train": GOOD_Y[:-1]}, "x_train has 12 samples but y_train has shape (11,)"),
    ({"x_train": GOOD_X, "y_train": np.zeros(12, dtype=int)}, "only one class"),
    ({"x_train": np.full((12, 6, 6), np.inf, dtype=np.float32), "y_train": GOOD_Y}, "NaN or infinite"),
    ({"x_train": GOOD_X.reshape(12, 36), "y_train": GOOD_Y}, "expected images (N, H, W) or (N, H, W, C)"),
    ({"x_train": np.array([object()] * 12, dtype=object), "y_train": GOOD_Y}, "pickled Python objects, refused"),
    ({"images": GOOD_X, "labels": GOOD_Y}, "missing array(s) x_train, y_train"),
], ids=["length-mismatch", "single-class", "inf", "wrong-rank", "pickled", "wrong-keys"])
def test_bad_npz_data(tmp_path, arrays, message):
    result = run_stage("prepare", npz_project(tmp_path, **arrays))
    assert_clean_failure(result, "data.path = user.npz", message)
    assert not (tmp_path / "data").exists()


def test_truncated_npz_and_unreadable_image(tmp_path):
    npz_project(tmp_path, x_train=GOOD_X, y_train=GOOD_Y)
    raw = (tmp_path / "user.npz").read_bytes()
    (tmp_path / "user.npz").write_bytes(raw[:100])
    assert_clean_failure(run_stage("prepare", tmp_path), "truncated or corrupt")

    from PIL import Image

    for label in ("a", "b"):
        (tmp_path / "imgs" / label).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (8, 8), color=(40 * i, 0, 0)).save(tmp_path / "imgs" / label / f"{i}.png")
    (tmp_path / "imgs/b/3.jpg").write_bytes(b"\xff\xd8\xff truncated jpeg")
    write_params(tmp_path, minimal_params(data={"name": "image_dir", "path": "imgs", "image_size": [8, 8]}))
    assert_clean_failure(run_stage("prepare", tmp_path), "imgs/b/3.jpg is not a readable image")
    assert not (tmp_path / "data").exists()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A project with prepared data and a trained teacher (tiny settings)."""
    root = tmp_path_factory.mktemp("trained")
    write_params(root, minimal_params())
    for stage in ("prepare", "train_teacher", "soft_targets"):
        result = run_stage(stage, root)
        assert result.returncode == 0, result.stderr[-2000:]
    return root


def copy_of(trained, tmp_path):
    project = tmp_path / "project"
    shutil.copytree(trained, project)
    return project


def test_truncated_teacher_names_the_stage_to_rerun(trained, tmp_path):
    project = copy_of(trained, tmp_path)
    teacher = project / "models/teacher.keras"
    teacher.write_bytes(teacher.read_bytes()[:500])
    shutil.rmtree(project / "data/soft_targets")
    result = run_stage("soft_targets", project)
    assert_clean_failure(result, "models/teacher.keras could not be loaded",
                         "rerun `dvc repro --force train_teacher`")
    assert not (project / "data/soft_targets").exists()


def test_soft_targets_of_the_wrong_length_name_the_stage_to_rerun(trained, tmp_path):
    project = copy_of(trained, tmp_path)
    from kdflow.io import load_npz, save_npz

    path = project / "data/soft_targets/logits.npz"
    arrays = load_npz(path, ("data_hash", "train", "val"), produced_by="soft_targets")
    save_npz(path, data_hash=arrays["data_hash"], train=arrays["train"][:-5], val=arrays["val"])
    result = run_stage("distill", project)
    assert_clean_failure(result, "rerun `dvc repro")
    assert not (project / "models/student_distilled.keras").exists()


def test_diverging_training_stops_without_saving(tmp_path):
    # Finite but absurdly scaled pixels overflow float32 in the first layer: the loss is NaN at once.
    npz_project(tmp_path, x_train=np.full((12, 6, 6), 1e38, dtype=np.float32), y_train=GOOD_Y)
    assert run_stage("prepare", tmp_path).returncode == 0
    result = run_stage("train_teacher", tmp_path)
    assert_clean_failure(result, "train_teacher.learning_rate=0.003: training diverged (loss is NaN/inf)",
                         "No model was saved")
    assert not (tmp_path / "models/teacher.keras").exists()
    assert not (tmp_path / "metrics").exists()


def test_lambda_teacher_is_refused_with_the_risk_and_the_opt_in(trained, tmp_path):
    import keras

    project = copy_of(trained, tmp_path)
    inputs = keras.Input((28, 28, 1))
    h = keras.layers.Lambda(lambda t: t * 1.0)(keras.layers.Flatten()(inputs))
    keras.Model(inputs, keras.layers.Dense(10)(h)).save(project / "mine.keras")
    raw = minimal_params(teacher={"source": "file", "path": "mine.keras", "arch": "repo_teacher"})
    write_params(project, raw)
    before = (project / "models/teacher.keras").read_bytes()
    result = run_stage("train_teacher", project)
    assert_clean_failure(result, "teacher.path = mine.keras: refused", "arbitrary code", "teacher.safe_mode: false")
    assert (project / "models/teacher.keras").read_bytes() == before  # the previous teacher is untouched


def start_stage(name, cwd):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", f"stages.{name}"], cwd=cwd, env=env,
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


# The stop signal: Ctrl-C (SIGINT) or `kill` / `dvc queue kill` / a CI time-out (SIGTERM).
@pytest.mark.parametrize("stage, outputs, stop", [
    ("train_teacher", ["models/teacher.keras", "dvclive/train_teacher"], signal.SIGINT),
    ("distill", ["models/student_distilled.keras", "models/student_distilled_repeats", "dvclive/distill"],
     signal.SIGINT),
    ("train_scratch", ["models/student_scratch.keras", "models/student_scratch_repeats", "dvclive/train_scratch"],
     signal.SIGTERM),
])
def test_sigkill_mid_training_leaves_no_output_and_sigint_exits_cleanly(trained, tmp_path, stage, outputs, stop):
    project = copy_of(trained, tmp_path)
    for out in outputs:  # as `dvc repro` does before running a stage
        shutil.rmtree(project / out, ignore_errors=True) if (project / out).is_dir() else (project / out).unlink(missing_ok=True)
    long = {"epochs": 200, "batch_size": 16, "learning_rate": 0.001, "lr_floor": 0.1, "amsgrad": False, "patience": None}
    write_params(project, minimal_params(train_teacher=long, train_student=long))

    process = start_stage(stage, project)
    wait_for_epoch(process)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    for out in outputs:
        assert not (project / out).exists(), out

    process = start_stage(stage, project)
    wait_for_epoch(process)
    process.send_signal(stop)
    rest = process.communicate(timeout=60)[0]
    assert process.returncode == 128 + stop, rest[-2000:]
    assert f"kdflow {stage}: interrupted, no outputs written" in rest and "Traceback" not in rest
    for out in outputs:
        assert not (project / out).exists(), out
    leftovers = [p.name for p in (project / "models").glob(".*")] + [p.name for p in (project / "dvclive").glob(".*")] \
        if (project / "dvclive").exists() else [p.name for p in (project / "models").glob(".*")]
    assert leftovers == []  # the killed run's temp files were cleaned by the next run

    write_params(project, minimal_params())  # and the stage completes afterwards
    done = run_stage(stage, project)
    assert done.returncode == 0, done.stderr[-2000:]
    for out in outputs:
        assert (project / out).exists(), out
