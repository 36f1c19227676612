"""Keep TensorFlow's and LiteRT's native log lines (absl, oneDNN, XNNPACK, the TFLite
converter) off the terminal. They are written by C++ straight to file descriptor 2, past
Python's sys.stderr and TF_CPP_MIN_LOG_LEVEL, so the descriptor itself is redirected.
KDFLOW_TF_LOGS=1 shows them again, for debugging."""

from __future__ import annotations

import importlib.abc
import importlib.util
import os
import sys
import tempfile
from contextlib import contextmanager
from typing import Iterator

TF_LOGS_ENV = "KDFLOW_TF_LOGS"


@contextmanager
def native_stderr_captured() -> Iterator[None]:
    """Send what native code writes to file descriptor 2 into a temp file; replay it if the
    block fails. With KDFLOW_TF_LOGS=1 it lets everything through."""
    if os.environ.get(TF_LOGS_ENV) == "1":
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        except BaseException:
            os.dup2(saved, 2)
            capture.seek(0)
            sys.stderr.write(capture.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


class _QuietLoader(importlib.abc.Loader):
    def __init__(self, loader: importlib.abc.Loader):
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        with native_stderr_captured():
            self.loader.exec_module(module)


class _QuietTensorFlowImport(importlib.abc.MetaPathFinder):
    """Imports `tensorflow`, whenever a module first asks for it, with its start-up lines
    captured. Stages validate params before they import TensorFlow, so the import stays lazy."""

    def find_spec(self, name, path=None, target=None):
        if name != "tensorflow":
            return None
        sys.meta_path.remove(self)  # once; and find_spec below must not find this finder again
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None:
            spec.loader = _QuietLoader(spec.loader)
        return spec


def quiet_tensorflow_startup() -> None:
    """Hide TensorFlow's native start-up logs in this process, unless KDFLOW_TF_LOGS=1."""
    if os.environ.get(TF_LOGS_ENV) != "1" and "tensorflow" not in sys.modules:
        sys.meta_path.insert(0, _QuietTensorFlowImport())
