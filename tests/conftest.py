import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


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
        "train_teacher": dict(tiny_train),
        "train_student": dict(tiny_train),
    }
    for key, value in overrides.items():
        raw[key] = value
    return raw


def make_prepared(n_per_class: int = 20, num_classes: int = 3, shape=(8, 8, 1), seed: int = 0):
    """A small learnable image dataset (class = which quadrant is bright), as Prepared."""
    from kdflow.data import Prepared, content_hash

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


def run_stage(name, cwd, timeout=300):
    """Run a stage script as a user does (`python -m stages.<name>`) in ``cwd``."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("KDFLOW_DEBUG", None)
    return subprocess.run([sys.executable, "-m", f"stages.{name}"], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)
