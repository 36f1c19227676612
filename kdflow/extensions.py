"""Every extension point, in one list: the full params schema (what `kdflow check` validates),
and which keys change only the distilled students (what the recipe search asks).

Stages never import this module: each stage loads the params with the extension points it uses
(kdflow.params), so it depends on their code and on no other's. The tools (the search, the
command line) and the tests use the whole.
"""

from __future__ import annotations

from pathlib import Path

from kdflow.architectures import FAMILIES
from kdflow.losses import METHODS
from kdflow.params import DISTILLED_ONLY_KEYS, Params, load_params, params_model, validate
from kdflow.paths import PARAMS_FILE
from kdflow.sources import SOURCES
from kdflow.views import VIEW_KINDS

REGISTRIES = (SOURCES, FAMILIES, VIEW_KINDS, METHODS)


def schema() -> type[Params]:
    """The params schema with every extension point's sections."""
    return params_model(*REGISTRIES)


def validate_all(raw, source: str = "params.yaml") -> Params:
    return validate(raw, *REGISTRIES, source=source)


def load_all(path: str | Path = PARAMS_FILE) -> Params:
    return load_params(*REGISTRIES, path=path)


def distilled_only(key: str) -> bool:
    """Whether the param ``key`` (dotted) changes only the distilled students: a core KD knob
    (alpha, temperature) or a key of a section owned by an extension point that says so (the
    distillation methods). The rest also change the scratch students (views, schedule, student)."""
    top = key.split(".")[0]
    return key in DISTILLED_ONLY_KEYS or any(r.distilled_only and top in r.sections for r in REGISTRIES)
