"""Shared test helpers and the one pipeline run of the session.

Tiers: `python -m pytest -m "not e2e and not bench and not apps"` runs the in-process tests (a
quick signal); `python -m pytest` adds the end-to-end tests (stage scripts and the real dvc CLI);
`-m bench` runs the benchmark's smoke tests and `-m apps` the keras.applications end-to-end runs.
"""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from benchmarks.common import copy_project, stages_run

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ALL_STAGES = {"prepare", "train_teacher", "soft_targets", "distill", "train_scratch", "train_plain", "train_pseudo",
              "export", "evaluate"}


def minimal_params(**overrides) -> dict:
    """A valid raw params mapping with tiny training settings."""
    tiny_train = {"epochs": 2, "batch_size": 32, "learning_rate": 0.003, "lr_floor": 0.1,
                  "amsgrad": False, "patience": None}
    raw = {
        "seed": 7,
        "alpha": 0.5,
        "temperature": 4.0,
        "data": {"name": "mnist5k", "val_fraction": 0.1, "test_fraction": 0.2},
        "teacher": {"arch": "spec", "spec": {"conv_filters": [8], "dense_units": [32]}},
        "student": {"arch": "repo_student"},
        "train_teacher": {**tiny_train, "augment": {"shift": 0.0}},
        "train_student": dict(tiny_train),
    }
    for key, value in overrides.items():
        raw[key] = value
    return raw


def validated(**overrides):
    """``minimal_params(**overrides)``, validated with every section (kdflow.schema)."""
    from kdflow.schema import Schema

    return Schema.checked(minimal_params(**overrides))


def section(key: str, **values):
    """One section of params.yaml (``data``, ``views``, ``student``, ...), validated by its class:
    ``section("views", count=4)``."""
    from kdflow.schema import Schema

    return Schema.model_fields[key].annotation.model_validate(values)


def students_of(params, role: str):
    from kdflow.training.students import Students

    return Students(params.student, params.train_student, params.repeats, params.seed, role)


def scratch_students(params, data, **kwargs):
    """The scratch students of ``params``, as train_scratch trains them (``views=`` for views)."""
    from kdflow.training import students

    return students.train(students_of(params, kwargs.pop("role", "student_scratch")), data, **kwargs)


def logit_targets(logits: dict) -> dict:
    """Teacher logits per split ({"train": array, "val": array}) as the distilled students' targets."""
    from kdflow.views.cache import TEACHER_LOGITS

    return {split: {TEACHER_LOGITS: value} for split, value in logits.items()}


def distilled_students(params, data, targets, teacher=None, **kwargs):
    """The distilled students of ``params`` on the teacher's ``targets`` per split (as
    kdflow.views.cache gives them), as distill trains them; ``teacher``: online."""
    from kdflow.distill import methods, objective
    from kdflow.training import students

    method = methods.build(params.distill, params.temperature)
    shapes = objective.feature_shapes(targets, method)
    return students.train(students_of(params, "student_distilled"), data,
                          objective=lambda: objective.objective(method, params.alpha, shapes, teacher),
                          targets=targets, **kwargs)


def make_prepared(n_per_class: int = 20, num_classes: int = 3, shape=(8, 8, 1), seed: int = 0):
    """A small learnable image dataset (class = which quadrant is bright), as Prepared."""
    from kdflow.core.prepared import Prepared, content_hash

    rng = np.random.default_rng(seed)
    arrays = {}
    sizes = {}
    for split_name, factor in (("train", 3), ("val", 1), ("test", 1)):
        y = np.repeat(np.arange(num_classes), n_per_class * factor // 3 + 1)
        x = rng.uniform(0, 0.3, size=(len(y), *shape)).astype(np.float32)
        for i, label in enumerate(y):
            x[i, : shape[0] // 2, label % shape[1]] += 0.7
        arrays[f"x_{split_name}"], arrays[f"y_{split_name}"] = x, y
        sizes[split_name] = len(y)
    meta = {"dataset": "synthetic", "num_classes": num_classes, "input_shape": list(shape),
            "sizes": sizes, "content_hash": content_hash(arrays)}
    return Prepared(meta, arrays)


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    """Run the test inside an empty directory (stages use paths relative to the project root)."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def stage_env(**extra) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT), **extra}
    env.pop("KDFLOW_DEBUG", None)
    return env


def run_stage(name, cwd, timeout=300):
    """Run a stage script as a user does (`python -m stages.<name>`) in ``cwd``."""
    return subprocess.run([sys.executable, "-m", f"stages.{name}"], cwd=cwd, env=stage_env(),
                          capture_output=True, text=True, timeout=timeout)


# ---- the real dvc CLI in temporary git repositories ---------------------------------------

def _env(env=None) -> dict:
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
            "DVC_NO_ANALYTICS": "1", "GIT_AUTHOR_NAME": "kdflow-test", "GIT_AUTHOR_EMAIL": "test@kdflow",
            "GIT_COMMITTER_NAME": "kdflow-test", "GIT_COMMITTER_EMAIL": "test@kdflow", **(env or {})}


def _checked(args, result):
    if result.returncode != 0:
        pytest.fail(f"{' '.join(args)} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def sh(args, cwd, check=True, env=None):
    result = subprocess.run(args, cwd=cwd, env=_env(env), capture_output=True, text=True, timeout=900)
    return _checked(args, result) if check else result


def sh_together(*runs):
    """Several ``(args, cwd, env)`` commands at once (independent projects: stage start-up is
    mostly single-threaded, so two overlap well on 2 cores); each must succeed."""
    started = [(args, subprocess.Popen(args, cwd=cwd, env=_env(env), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                       text=True)) for args, cwd, env in runs]
    results = []
    for args, process in started:
        out, err = process.communicate(timeout=900)
        results.append(_checked(args, subprocess.CompletedProcess(args, process.returncode, out, err)))
    return results


def stages_skipped(output: str) -> set[str]:
    return set(re.findall(r"Stage '([a-z_]+)' didn't change, skipping", output))


def tiny_params(params: dict) -> dict:
    """The committed params with a tiny teacher, 2 repeats and one epoch each."""
    params["teacher"].update(arch="spec", spec={"conv_filters": [8], "dense_units": [32]})
    params["repeats"] = 2
    for section in ("train_teacher", "train_student"):
        params[section].update(epochs=1, batch_size=128)
    return params


def make_repo(repo: Path, commit: bool = True, **param_updates) -> Path:
    """The project's files in a fresh git repository, with tiny training settings."""
    copy_project(repo)
    params = tiny_params(yaml.safe_load((repo / "params.yaml").read_text()))
    for key, value in param_updates.items():
        params[key].update(value) if isinstance(value, dict) else params.__setitem__(key, value)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    sh(["git", "init", "-q", "-b", "main"], repo)
    if commit:
        sh(["git", "add", "-A"], repo)
        sh(["git", "commit", "-qm", "init"], repo)
    return repo


@pytest.fixture(scope="session")
def session_repos(tmp_path_factory):
    """The session's two pipeline runs, side by side: the tiny project with the committed params
    (committed after its run) and a user's own data and teacher. Returns {"pipeline": (repo,
    output), "byo": (...)}. Under pytest-xdist the first process to ask builds them and the
    others wait for it and share them (a file lock in the run's common temporary folder), so
    the pipeline runs once per run; tests change copies (``copy_repo``), never these."""
    import fcntl
    import json

    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):  # each process has its own folder below the run's
        shared = shared.parent
    record = shared / "session_repos.json"
    with open(shared / "session_repos.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if not record.exists():
            pipeline = make_repo(shared / "session-pipeline" / "repo")
            byo = make_byo_repo(shared / "session-byo" / "repo")
            runs = sh_together(*[(["dvc", "repro"], repo, None) for repo in (pipeline, byo)])
            sh(["git", "add", "-A"], pipeline)
            sh(["git", "commit", "-qm", "baseline results"], pipeline)
            record.write_text(json.dumps({name: [str(repo), run.stdout + run.stderr] for (name, repo), run
                                          in zip((("pipeline", pipeline), ("byo", byo)), runs)}))
    return {name: (Path(repo), output) for name, (repo, output) in json.loads(record.read_text()).items()}


@pytest.fixture(scope="session")
def pipeline_repo(session_repos):
    """A tiny project after one full `dvc repro`, committed: the session's pipeline run of the
    committed params. Tests that change a project work on a copy (``copy_repo``)."""
    repo, output = session_repos["pipeline"]
    assert stages_run(output) == ALL_STAGES
    (repo.parent / "first_repro.log").write_text(output)
    return repo


def copy_repo(repo: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "repo"
    shutil.copytree(repo, copy, symlinks=True)
    return copy


def user_images(per_class: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """RGB 10x10 uint8 images of the classes ant, bee and cow (string labels), class c marked by
    its bright column c."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.array(["ant", "bee", "cow"]), per_class)
    x = rng.integers(0, 80, size=(len(labels), 10, 10, 3), dtype=np.uint8)
    for i, label in enumerate(labels):
        x[i, :, "abc".index(label[0])] = 255
    return x, labels


def write_user_npz(repo: Path, per_class: int) -> None:
    """``inputs/mine.npz`` in ``repo``: ``user_images``."""
    (repo / "inputs").mkdir(parents=True)
    x, labels = user_images(per_class)
    np.savez(repo / "inputs/mine.npz", x_train=x, y_train=labels)


def make_byo_repo(repo: Path) -> Path:
    """A user's own data (.npz: string labels, 3 classes, RGB 10x10) with images without labels
    (an .npz of 45 more, and all but 8 labels per class of the training split dropped) and own
    teacher as a user brings one: a legacy .h5 file, expecting pixels in [0, 255], ending in a
    Softmax layer, tracked with `dvc add`, distilled with attention transfer (the attention maps
    of the teacher's spatial `features` layer, which sits inside the teacher's wrapper) on cutmix
    views cached in float16: the other code paths of every stage, train_pseudo's included."""
    import keras

    write_user_npz(repo, per_class=20)
    np.savez(repo / "inputs/unlabeled.npz", x=user_images(15, seed=1)[0])
    # Hand-set weights: class c's score is the brightness of column c, on the 0-255 scale.
    inputs = keras.Input((10, 10, 3))
    features = keras.layers.Flatten(name="flat")(keras.layers.Activation("linear", name="features")(inputs))
    scores = keras.layers.Dense(3, activation="relu", name="scores")
    probabilities = keras.layers.Softmax(name="probabilities")(scores(features))
    kernel = np.zeros((10, 10, 3, 3), np.float32)
    for c in range(3):
        kernel[:, c, :, c] = 1 / 255
    scores.set_weights([kernel.reshape(300, 3), np.full(3, -10.0, np.float32)])
    keras.Model(inputs, probabilities).save(repo / "inputs/teacher.h5")
    make_repo(repo, commit=False,
              data={"name": "npz", "path": "inputs/mine.npz", "val_fraction": 0.2, "test_fraction": 0.2,
                    "unlabeled": "inputs/unlabeled.npz", "labels_per_class": 8},
              teacher={"source": "file", "path": "inputs/teacher.h5", "input_range": "byte"},
              distill={"method": "at", "at": {"teacher_layer": "features", "student_layer": "relu0"}},
              train_student={"epochs": 15, "batch_size": 12},  # long enough for a student to learn (36 images)
              views={"mix": "cutmix", "cache_dtype": "float16"})
    sh(["dvc", "add", "inputs/mine.npz", "inputs/unlabeled.npz", "inputs/teacher.h5"], repo)
    sh(["git", "add", "-A"], repo)
    sh(["git", "commit", "-qm", "track inputs"], repo)
    return repo


@pytest.fixture(scope="session")
def byo_repo(session_repos):
    """The user's-own-data project after its `dvc repro`: (repo, its output)."""
    return session_repos["byo"]
