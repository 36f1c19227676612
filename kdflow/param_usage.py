"""Which params a stage reads. With KDFLOW_PARAMS_LOG=<file>, ``load_params`` hands out a view
of the params that records every key read through it, and the process appends one JSON line
``{"stage": ..., "keys": [...]}`` to the file when it exits. tests/test_consistency.py runs the
pipeline this way and checks each stage's ``params:`` in dvc.yaml against what it read."""

from __future__ import annotations

import atexit
import functools
import json
import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel

LOG_ENV = "KDFLOW_PARAMS_LOG"


class ParamsView:
    """Reads through to a validated params model (or one of its sections) and records the
    dotted key of every leaf read. Methods and properties of a section run against the view,
    so what they read is recorded too; isinstance and == see the underlying model."""

    __slots__ = ("_model", "_path", "_keys")

    def __init__(self, model: BaseModel, path: str, keys: set[str]):
        object.__setattr__(self, "_model", model)
        object.__setattr__(self, "_path", path)
        object.__setattr__(self, "_keys", keys)

    @property
    def __class__(self):  # isinstance(view, ResNetSpec) is True for a ResNetSpec section
        return type(self._model)

    def __getattr__(self, name: str) -> Any:
        model, keys = self._model, self._keys
        if name in type(model).model_fields:
            key = f"{self._path}.{name}" if self._path else name
            value = getattr(model, name)
            if isinstance(value, BaseModel):
                return ParamsView(value, key, keys)
            keys.add(key)
            return value
        attr = getattr(type(model), name, None)
        if hasattr(BaseModel, name):  # pydantic's own API (model_dump, ...): not a read of a key
            return getattr(model, name)
        if isinstance(attr, property):
            return attr.fget(self)
        if callable(attr):
            return functools.partial(attr, self)
        return getattr(model, name)

    def __setattr__(self, name, value):
        raise TypeError("params are read-only")

    def __eq__(self, other):
        return unwrap(self) == unwrap(other)

    def __hash__(self):
        return hash(unwrap(self))

    def __repr__(self):
        return repr(self._model)


def unwrap(value: Any) -> Any:
    return object.__getattribute__(value, "_model") if type(value) is ParamsView else value


def recording(params: BaseModel, log: str | Path) -> ParamsView:
    """A recording view of ``params``; the keys read are appended to ``log`` at exit."""
    keys: set[str] = set()
    stage = Path(sys.argv[0]).stem if sys.argv and sys.argv[0] else "?"

    def write():
        with open(log, "a") as f:
            f.write(json.dumps({"stage": stage, "keys": sorted(keys)}) + "\n")

    atexit.register(write)
    return ParamsView(params, "", keys)
