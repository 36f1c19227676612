"""The recipes of a search: a grid of params as DVC's `-S` takes them, made into overrides of the
workspace's params, always with no distillation (alpha = 1) among them."""

from __future__ import annotations

import itertools
from pathlib import Path

import yaml

from kdflow.core import KdflowError
from kdflow.core.paths import DVC_YAML, PARAMS_FILE

# The grid when no -S is given: the KD params that mattered most (docs/results.md), with and without
# the views, and with the views unmixed, mixup and cutmix (function matching): on small images the
# default shifts can cost the scratch students more than the teacher gives back (8x8 digits), and
# a mix can help either student. Views are chosen on the scratch students first. Without views
# there is nothing to mix: 4 view settings x 4 recipes + their 4 alpha = 1 runs.
DEFAULT_GRID = {"views.count": [0, "<workspace>"], "views.mix": ["none", "mixup", "cutmix"],
                "alpha": [0.1, 0.5], "temperature": [2.0, 4.0]}
NO_DISTILLATION = {"alpha": 1.0, "distill.method": "kd"}
# The stages whose outputs the paired baseline (the teacher, its cache, the scratch, plain and
# pseudo-labelled students) comes from: a param none of them reads changes only the distilled students.
BASELINE_STAGES = ("prepare", "train_teacher", "soft_targets", "train_scratch", "train_plain", "train_pseudo")


def default_grid(workspace: dict) -> dict[str, list]:
    """DEFAULT_GRID with the workspace's views.count as the second value (no duplicate when it is 0)."""
    counts = sorted({0, workspace["views.count"]})
    return {**DEFAULT_GRID, "views.count": counts}


def parse_grid(assignments: list[str]) -> dict[str, list]:
    """``-S key=v1,v2`` as DVC reads it: values are YAML scalars."""
    grid = {}
    for text in assignments:
        key, sep, values = text.partition("=")
        if not sep or not key or not values:
            raise KdflowError(f"-S {text!r}: expected key=value[,value...], e.g. -S alpha=0.1,0.5")
        grid[key.strip()] = [yaml.safe_load(v) for v in values.split(",")]
    return grid


def _covered(key: str, listed) -> bool:
    return any(key == str(p) or key.startswith(f"{p}.") for p in listed)


class Distilled:
    """Which params change only the distilled students: those the `distill` stage reads and no
    stage of the baseline does, as dvc.yaml lists them (alpha, temperature, distill.*)."""

    def __init__(self, dvc_yaml: str | Path = DVC_YAML):
        try:
            stages = yaml.safe_load(Path(dvc_yaml).read_text())["stages"]
        except (OSError, yaml.YAMLError, KeyError, TypeError):
            raise KdflowError(f"{dvc_yaml}: not found or not a DVC pipeline (run from the project root)") from None
        self.distill = [str(p) for p in stages["distill"].get("params", [])]
        self.baseline = [str(p) for name in BASELINE_STAGES for p in stages.get(name, {}).get("params", [])]

    def __call__(self, key: str) -> bool:
        return _covered(key, self.distill) and not _covered(key, self.baseline)

    def baseline_part(self, recipe: dict) -> dict:
        """What a recipe sets for the scratch students too (views, schedule, student)."""
        return {k: v for k, v in recipe.items() if not self(k)}


def flat(tree: dict, prefix: str = "") -> dict:
    """A nested params mapping as dotted keys."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def unflat(dotted: dict) -> dict:
    tree: dict = {}
    for key, value in dotted.items():
        *parents, leaf = key.split(".")
        node = tree
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return tree


def recipes(grid: dict[str, list], workspace: dict, known: set[str], distilled: Distilled) -> list[dict]:
    """Every combination of the grid, as overrides of the workspace's params, after one recipe
    without distillation (alpha = 1, kd) for each setting of the grid's other axes. Alpha = 1
    with kd uses neither the temperature nor a method's knobs: one such recipe per setting.
    ``known``: every param a recipe may set."""
    unknown = sorted(set(grid) - known)
    if unknown:
        raise KdflowError(f"-S {unknown[0]}: no such param in {PARAMS_FILE} (docs/params.md)")
    if data := sorted(key for key in grid if key == "data" or key.startswith("data.")):
        raise KdflowError(f"-S {data[0]}: the data is not a recipe (a recipe is chosen on its validation split); "
                          "set it in params.yaml and search on each data setting apart")
    combinations = [dict(zip(grid, values)) for values in itertools.product(*grid.values())]
    found: list[dict] = []
    for recipe in [{**distilled.baseline_part(r), **NO_DISTILLATION} for r in combinations] + combinations:
        full = {**workspace, **recipe}
        if full.get("views.count") == 0:  # no views: how they would be drawn or mixed changes nothing
            recipe = {k: v for k, v in recipe.items() if not k.startswith("views.") or k == "views.count"}
        if full["alpha"] == 1.0 and full["distill.method"] == "kd":
            recipe = {**distilled.baseline_part(recipe), **NO_DISTILLATION}
        if recipe not in found:
            found.append(recipe)
    return found


def no_distillation(recipe: dict) -> bool:
    """An alpha = 1 recipe of ``recipes``: the scratch students, which its setting's KD recipes are paired with."""
    return all(recipe.get(key) == value for key, value in NO_DISTILLATION.items())


def share(wanted: list[dict], part: int, parts: int, distilled: Distilled) -> list[dict]:
    """Part ``part`` of ``parts`` (1-based) of the recipes, the same on every host given the same
    grid and params: with as many baseline settings as parts or more, each setting's recipes stay
    together (its scratch and plain students are then trained on one host only); otherwise each
    recipe is dealt alone, and every alpha = 1 recipe belongs to part 1. Whole settings or single
    recipes go, in grid order, to the part with the fewest recipes so far (ties: the lowest part)."""
    groups: list[list[dict]] = []
    settings: list[dict] = []
    for recipe in wanted:
        setting = distilled.baseline_part(recipe)
        if setting not in settings:
            settings.append(setting)
            groups.append([])
        groups[settings.index(setting)].append(recipe)
    if len(groups) < parts:
        groups = [[r] for r in wanted if not no_distillation(r)]
        load = [sum(map(no_distillation, wanted))] + [0] * (parts - 1)
        dealt: list[list[dict]] = [[r for r in wanted if no_distillation(r)]] + [[] for _ in range(parts - 1)]
    else:
        load, dealt = [0] * parts, [[] for _ in range(parts)]
    for group in groups:
        emptiest = load.index(min(load))
        dealt[emptiest] += group
        load[emptiest] += len(group)
    mine = dealt[part - 1]
    return [r for r in wanted if r in mine]  # in grid order


def matches(params: dict, recipe: dict, workspace: dict, distilled: Distilled) -> bool:
    """``params`` (flattened, from `dvc exp show`, which leaves nulls out) are the workspace's
    with ``recipe`` applied; without distillation the KD params (temperature, ...) do not matter."""
    full = {**workspace, **recipe}
    ignored = distilled if (full["alpha"] == 1.0 and full["distill.method"] == "kd") else (lambda key: False)
    return all(params.get(key) == value for key, value in full.items()
               if not ignored(key) or key in NO_DISTILLATION)


def yaml_value(value) -> str:
    """A value as `-S key=value` writes it."""
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


def label(recipe: dict) -> str:
    return ", ".join(f"{k}={yaml_value(v)}" for k, v in recipe.items())
