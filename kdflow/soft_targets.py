"""The teacher's cached logits: computed once by `soft_targets`, read by `distill`."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from kdflow.data import Prepared
from kdflow.errors import KdflowError
from kdflow.io import load_npz, save_npz

SOFT_TARGETS_PATH = Path("data/soft_targets/logits.npz")
SPLITS = ("train", "val")


def compute(teacher, data: Prepared) -> dict[str, np.ndarray]:
    """Run the teacher once (inference mode: no dropout) over the train and val splits."""
    return {
        name: teacher.predict(data.xy(name)[0], batch_size=512, verbose=0).astype(np.float32)
        for name in SPLITS
    }


def save(logits: dict[str, np.ndarray], data: Prepared, path: Path = SOFT_TARGETS_PATH) -> None:
    # The data hash ties the cache to the exact prepared data it was computed on.
    save_npz(path, data_hash=np.array(data.meta["content_hash"]), **logits)


def load(data: Prepared, path: Path = SOFT_TARGETS_PATH) -> dict[str, np.ndarray]:
    arrays = load_npz(path, ("data_hash", *SPLITS), produced_by="soft_targets")
    rerun = "rerun `dvc repro soft_targets`"
    if str(arrays.pop("data_hash")) != data.meta["content_hash"]:
        raise KdflowError(f"{path} was computed on other prepared data: {rerun}")
    for name in SPLITS:
        expected = (len(data.xy(name)[1]), data.num_classes)
        if arrays[name].shape != expected:
            raise KdflowError(
                f"{path}: {name} logits have shape {arrays[name].shape}, expected {expected}: {rerun}"
            )
    return arrays
