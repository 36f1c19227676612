"""Atomic, byte-reproducible file writing and checked reading of JSON.

Every output goes to a temporary file in the destination folder and is renamed into place,
so an interrupted stage never leaves a half-written file. Zip archives (.keras) are written
with fixed timestamps so the same content always hashes the same in DVC. A non-chief worker
of multi-worker training writes nothing of the project's (``discard_writes``).
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import tempfile
import zipfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping

from kdflow.core import KdflowError

_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)
# Temp outputs of this process being written now, each with the output it becomes: removed by
# the stage wrapper on Ctrl-C.
ACTIVE_TEMPS: dict[Path, Path] = {}
# Where a process that must not write the project's outputs writes them instead (a non-chief
# worker of multi-worker training): a private temp folder, removed when the process exits. Process
# state, like the distribution strategy: a process is a chief or not for its whole life.
_discard_root: Path | None = None


def discard_writes() -> None:
    """From now on, every output this process writes through this module goes to a private
    temp folder that is removed at exit: the project's files stay as they are."""
    global _discard_root
    if _discard_root is None:
        _discard_root = Path(tempfile.mkdtemp(prefix="kdflow-worker-"))
        atexit.register(shutil.rmtree, _discard_root, ignore_errors=True)


def writes_discarded() -> bool:
    return _discard_root is not None


def _destination(path: str | Path) -> Path:
    path = Path(path)
    if _discard_root is None or path.absolute().is_relative_to(_discard_root):
        return path
    return _discard_root / path.absolute().relative_to(path.absolute().anchor)


def _remove_stale_temps(path: Path) -> None:
    """Temp files/folders of a run that was killed (SIGKILL skips every cleanup) are removed
    by the next write of the same output."""
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink(missing_ok=True)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temp path next to ``path``; rename it onto ``path`` only if the block succeeds."""
    path = _destination(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    ACTIVE_TEMPS[tmp_path] = path
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except BaseException as exc:
        _note_output(exc, path)
        raise
    finally:
        tmp_path.unlink(missing_ok=True)
        ACTIVE_TEMPS.pop(tmp_path, None)


@contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a fresh temp folder next to ``path``; swap it in for ``path`` only if the block
    succeeds (an old ``path`` is replaced as a whole, never mixed with new files)."""
    path = _destination(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(path)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; the result is an ordinary project folder
    ACTIVE_TEMPS[staging] = path
    try:
        yield staging
        if path.exists():
            shutil.rmtree(path)
        staging.rename(path)
    except BaseException as exc:
        _note_output(exc, path)
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # only left if the block failed
        ACTIVE_TEMPS.pop(staging, None)


def _note_output(exc: BaseException, path: Path) -> None:
    """Remember on ``exc`` the innermost output being written when it was raised (the stage
    wrapper names it when a write fails for lack of space)."""
    if getattr(exc, "kdflow_output", None) is None:
        for temp, output in ACTIVE_TEMPS.items():  # a file in a folder being written: that folder's name
            if path.is_relative_to(temp):
                path = output / path.relative_to(temp)
        try:
            exc.kdflow_output = path
        except AttributeError:  # an exception type that takes no attributes
            pass


def write_json(path: str | Path, data: Mapping[str, Any]) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def read_json(path: str | Path, *, produced_by: str) -> dict[str, Any]:
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise KdflowError(f"{path} is missing: run `dvc repro {produced_by}` first") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise KdflowError(f"{path} is corrupt: rerun `dvc repro --force {produced_by}`") from None


def _fixed_zip_info(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=_ZIP_EPOCH)
    info.compress_type = zipfile.ZIP_DEFLATED
    info.external_attr = 0o644 << 16
    return info


def write_fixed_zip(dest: Path, members: Mapping[str, bytes]) -> None:
    """A zip archive of ``members`` with fixed timestamps: the same members give the same bytes."""
    with zipfile.ZipFile(dest, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, payload in members.items():
            zf.writestr(_fixed_zip_info(name), payload)
