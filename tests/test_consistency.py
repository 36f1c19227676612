"""One source of truth: the facts written in more than one place agree, and each check is shown
to catch a deliberately stale entry.

- params.yaml spells out the schema's defaults (kdflow/schema.py);
- each stage's code deps in dvc.yaml are exactly the kdflow sub-packages its script imports
  (transitively), and no sub-package reaches a stage whose outputs it cannot change (the
  sub-package -> stages table of docs/extending.md, printed by the test);
- each stage's params in dvc.yaml are exactly what its script reads (stage scripts are the only
  readers of params: the library gets typed sections);
- kdflow/, stages/ and benchmarks/ have no import cycle;
- dvc.yaml's outputs are the paths kdflow/core/paths.py defines;
- the README's stage table and docs/params.md agree with dvc.yaml and the schema.
"""

import ast
import json
import re
import typing
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

from conftest import ROOT
from kdflow.core import paths
from kdflow.core.params import Params
from kdflow.distill.methods import METHODS, DistillParams
from kdflow.models.applications import ApplicationKnobs
from kdflow.models.families import FAMILIES, PRESETS
from kdflow.schema import Schema
from kdflow.views.kinds import VIEW_KINDS
from kdflow.views.mixes import MIXES

DVC_YAML = yaml.safe_load((ROOT / "dvc.yaml").read_text())
STAGES = list(DVC_YAML["stages"])


def leaf_keys(tree: dict, prefix: str = "") -> set[str]:
    keys = set()
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        keys |= leaf_keys(value, f"{dotted}.") if isinstance(value, dict) else {dotted}
    return keys


def flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        out.update(flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
    return out


# ---- params.yaml vs the schema ---------------------------------------------------------------

def dumped(params: Params) -> dict:
    """The params as a tree; the optional architecture sections (`spec`, `resnet`) only when given
    (a null *value*, such as `patience: null`, is a setting and stays)."""
    def prune(tree):
        return {k: prune(v) if isinstance(v, dict) else v for k, v in tree.items()
                if not (k in FAMILIES and v is None)}
    return prune(params.model_dump())


def unselected_entry_keys() -> set[str]:
    """The keys of entries other than the default ones (a view kind's, a method's, a
    keras.applications model's): params.yaml may leave them out, as a user's may (their defaults apply)."""
    defaults = Schema()
    keys = {f"views.{key}" for name, kind in VIEW_KINDS.items() if name != defaults.views.kind
            for key in kind.knobs.model_fields}
    keys |= {f"distill.{name}.{key}" for name in DistillParams.model_fields if name not in ("method", defaults.distill.method)
             for key in DistillParams.model_fields[name].annotation.model_fields}
    keys |= {f"{model}.{key}" for model in ("teacher", "student") for key in ApplicationKnobs.model_fields}
    return keys


def schema_disagreements(raw: dict) -> list[str]:
    """Keys where a params mapping differs from the schema's defaults, that it lacks (all but the
    unselected entries' keys), or that the schema does not know."""
    defaults = flat(dumped(Schema()))
    given = flat(dumped(Schema.checked(raw)))
    present = leaf_keys(raw)
    problems = sorted((set(defaults) - present - unselected_entry_keys()) | (present - set(defaults)))
    problems += [f"{k}: {given[k]!r} != default {defaults[k]!r}" for k in sorted(defaults) if given.get(k) != defaults[k]]
    return problems


def test_params_yaml_spells_out_exactly_the_schema_defaults():
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert schema_disagreements(raw) == []
    assert Schema.load(ROOT / "params.yaml") == Schema()


def test_a_stale_default_in_params_yaml_is_caught():
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["repeats"] = 3
    del raw["train_teacher"]["augment"]["shift"]
    del raw["distill"]["dkd"]  # an unselected method's knobs may be left out
    # a key missing from params.yaml, and a value that is not the schema's default
    assert schema_disagreements(raw) == ["train_teacher.augment.shift", "repeats: 3 != default 5"]


def test_each_entry_with_knobs_has_its_field_and_every_field_its_entry():
    """The sections are written out, not composed: each registry's names and knobs classes and
    the section that types them agree."""
    knobs = {name: field.annotation for name, field in DistillParams.model_fields.items() if name != "method"}
    assert set(knobs) <= set(METHODS) and typing.get_args(DistillParams.model_fields["method"].annotation) == tuple(METHODS)
    for name, section in knobs.items():  # a method's builder takes its knobs class
        assert typing.get_type_hints(METHODS[name])["knobs"] is section, name
    nested = {name for name, family in FAMILIES.items() if not family.flat}
    model_fields = Schema.model_fields["student"].annotation.model_fields
    assert all(typing.get_args(model_fields[name].annotation)[0] is FAMILIES[name].knobs for name in nested)
    views = Schema.model_fields["views"].annotation
    assert all(issubclass(views, kind.knobs) for kind in VIEW_KINDS.values())
    assert typing.get_args(views.model_fields["kind"].annotation) == tuple(VIEW_KINDS)
    assert typing.get_args(views.model_fields["mix"].annotation) == tuple(MIXES)


# ---- code deps: what each stage imports ----------------------------------------------------

def module_file(module: str) -> Path | None:
    base = ROOT / module.replace(".", "/")
    return base.with_suffix(".py") if base.with_suffix(".py").exists() else (
        base / "__init__.py" if (base / "__init__.py").exists() else None)


def imported_modules(path: Path, prefixes=("kdflow",)) -> set[str]:
    """The modules under ``prefixes`` a file imports, anywhere in it (lazy imports inside
    functions too), not those imported for type checking only."""
    tree = ast.parse(path.read_text())
    type_only = {id(node) for branch in ast.walk(tree) if isinstance(branch, ast.If)
                 and "TYPE_CHECKING" in ast.unparse(branch.test) for node in ast.walk(branch)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith(prefixes)}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(prefixes):
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names
                      if module_file(f"{node.module}.{alias.name}") is not None}
    return found


def imported_closure(path: Path) -> set[str]:
    """Every kdflow module a file imports, transitively (with the packages whose __init__ runs)."""
    found, todo = set(), [path]
    while todo:
        for module in imported_modules(todo.pop()):
            parts = module.split(".")
            for package in (".".join(parts[:i]) for i in range(1, len(parts) + 1)):
                if package not in found and module_file(package) is not None:
                    found.add(package)
                    todo.append(module_file(package))
    return found


def code_deps(stage: str, script: Path | None = None) -> set[str]:
    """stages/<stage>.py and the kdflow sub-packages (folders) it imports, transitively."""
    modules = imported_closure(script or ROOT / "stages" / f"{stage}.py")
    deps = {f"stages/{stage}.py"}
    for module in modules - {"kdflow"}:
        parts = module.split(".")
        deps.add(f"kdflow/{parts[1]}" if (ROOT / "kdflow" / parts[1]).is_dir() else f"kdflow/{parts[1]}.py")
    return deps


def declared_code_deps(dvc_yaml: dict, stage: str) -> set[str]:
    return {str(d) for d in dvc_yaml["stages"][stage]["deps"] if str(d).startswith(("stages/", "kdflow/"))}


@pytest.mark.parametrize("stage", STAGES)
def test_dvc_yaml_code_deps_are_the_folders_the_stage_imports_in_six_lines_at_most(stage):
    assert declared_code_deps(DVC_YAML, stage) == code_deps(stage)
    assert len(code_deps(stage)) <= 6


def test_a_stale_code_dep_is_caught(tmp_path):
    stale = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    stale["stages"]["distill"]["deps"].remove("kdflow/distill")
    assert code_deps("distill") - declared_code_deps(stale, "distill") == {"kdflow/distill"}
    # a stage script that starts importing another sub-package (the report, in train_plain)
    script = tmp_path / "train_plain.py"
    script.write_text((ROOT / "stages/train_plain.py").read_text() + "\nfrom kdflow.evaluate import report\n")
    assert code_deps("train_plain", script) - code_deps("train_plain") == {"kdflow/evaluate"}


def test_the_package_init_runs_nothing_so_no_stage_depends_on_it():
    """kdflow/__init__.py is imported by every stage but listed by none: it holds the docstring
    and the version only (a version bump reruns nothing)."""
    body = ast.parse((ROOT / "kdflow/__init__.py").read_text()).body
    assert isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
    assert [ast.unparse(node) for node in body[1:]] == [f"__version__ = {__import__('kdflow').__version__!r}"]


def stages_of_folders(deps: dict[str, set[str]]) -> dict[str, list[str]]:
    """kdflow sub-package (or top-level module) -> the stages whose code deps include it (in pipeline order)."""
    kdflow = ROOT / "kdflow"
    entries = sorted([f"kdflow/{p.name}" for p in kdflow.iterdir() if p.is_dir() and (p / "__init__.py").exists()]
                     + [f"kdflow/{p.name}" for p in kdflow.glob("*.py") if p.name != "__init__.py"])
    return {entry: [stage for stage in STAGES if entry in deps[stage]] for entry in entries}


TRAINING = {"train_teacher", "distill", "train_scratch", "train_plain", "train_pseudo"}
# sub-package -> the only stages it may reach: a change to it can change no other stage's outputs
MAY_REACH = {
    "kdflow/data": {"prepare"},
    "kdflow/teacher": {"train_teacher"},
    # the view kinds, mixes and the cache (the teacher's random-resized crops are the crop kind's;
    # the report lists the views' keys)
    "kdflow/views": {"train_teacher", "soft_targets", "distill", "train_scratch", "train_pseudo", "evaluate"},
    "kdflow/training": TRAINING,
    # the KD methods: never the teacher, its cache or the scratch students (evaluate names them)
    "kdflow/distill": {"distill", "evaluate"},
    "kdflow/evaluate": {"evaluate"},  # the metrics and the report: never a training stage
    "kdflow/export": {"export"},
    # tools run outside the pipeline: editing them reruns nothing
    **dict.fromkeys(("kdflow/search", "kdflow/cli.py", "kdflow/schema.py"), set()),
}


def reach_problems(table: dict[str, list[str]]) -> list[str]:
    return [f"{m} reaches {', '.join(s for s in stages if s not in MAY_REACH[m])}" for m, stages in table.items()
            if m in MAY_REACH and not set(stages) <= MAY_REACH[m]]


def markdown_table(table: dict[str, list[str]]) -> str:
    lines = ["| sub-package | stages that depend on it |", "|---|---|"]
    lines += [f"| `{m.removeprefix('kdflow/')}` | {', '.join(f'`{s}`' for s in stages) or '(none: a tool)'} |"
              for m, stages in table.items()]
    return "\n".join(lines)


def test_each_sub_package_reaches_only_the_stages_it_can_change_and_the_docs_show_the_table():
    deps = {stage: code_deps(stage) for stage in STAGES}
    table = stages_of_folders(deps)
    print(markdown_table(table))  # the table of docs/extending.md (pytest -s shows it)
    assert reach_problems(table) == []
    assert set(MAY_REACH) <= set(table)  # every rule names a sub-package that exists
    assert markdown_table(table) in (ROOT / "docs/extending.md").read_text()
    # The rule is shown to fire: a KD method or a metric imported by a training stage.
    deps["train_teacher"] |= {"kdflow/distill"}
    deps["train_scratch"] |= {"kdflow/evaluate"}
    assert reach_problems(stages_of_folders(deps)) == ["kdflow/distill reaches train_teacher",
                                                       "kdflow/evaluate reaches train_scratch"]


def test_the_top_level_is_the_pipeline_not_a_flat_package():
    top = sorted(p.name for p in (ROOT / "kdflow").glob("*.py"))
    assert top == ["__init__.py", "cli.py", "schema.py"]
    packages = sorted(p.name for p in (ROOT / "kdflow").iterdir() if (p / "__init__.py").exists())
    assert packages == ["core", "data", "distill", "evaluate", "export", "models", "search", "teacher", "training",
                        "views"]


# ---- no import cycles ----------------------------------------------------------------------

def import_graph() -> dict[str, set[str]]:
    """module -> the project modules it imports (lazy ones too), over kdflow/, stages/, benchmarks/."""
    graph = {}
    for folder in ("kdflow", "stages", "benchmarks"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            module = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
            graph[module] = {m for m in imported_modules(path, ("kdflow", "stages", "benchmarks"))
                             if module_file(m) is not None and m != module}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import cycles of ``graph`` (each as the path that closes it), by depth-first search."""
    found, state = [], {}

    def visit(node, path):
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                found.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    return found


def test_kdflow_stages_and_benchmarks_have_no_import_cycle():
    graph = import_graph()
    assert sum(len(v) for v in graph.values()) > 100  # the graph is really read
    assert cycles(graph) == []
    # the check is shown to fire: the benchmarks' command imported back by a benchmark
    graph["benchmarks.sizes"] = graph["benchmarks.sizes"] | {"benchmarks.run"}
    assert [c for c in cycles(graph) if {"benchmarks.run", "benchmarks.sizes"} <= set(c)]


# ---- params: what each stage reads ---------------------------------------------------------

def chain(node: ast.Attribute) -> list[str] | None:
    """``params.a.b`` -> ["a", "b"]; None when the attribute chain is not rooted at `params`."""
    names = []
    while isinstance(node, ast.Attribute):
        names.append(node.attr)
        node = node.value
    return names[::-1] if isinstance(node, ast.Name) and node.id == "params" else None


def as_key(names: list[str]) -> str:
    """The longest prefix of ``names`` that is a key of the schema (`views.shaping_keys` -> `views`)."""
    model, key = Schema, []
    for name in names:
        if not (isinstance(model, type) and issubclass(model, BaseModel)) or name not in model.model_fields:
            break
        key.append(name)
        annotation = model.model_fields[name].annotation
        model = next((a for a in (annotation, *typing.get_args(annotation))
                      if isinstance(a, type) and issubclass(a, BaseModel)), None)
    return ".".join(key)


def stage_reads(source: str) -> tuple[set[str], list[str]]:
    """The params keys a stage script reads (every `params.<key>` it writes), and its uses of
    `params` that are not such a read (passing the whole params on: no library function takes it)."""
    tree = ast.parse(source)
    chains = [node for node in ast.walk(tree) if isinstance(node, ast.Attribute) and chain(node)]
    inner = {id(node.value) for node in chains}  # `params.views` inside `params.views.count`
    reads = {as_key(chain(node)) for node in chains if id(node) not in inner} - {""}
    attribute_roots = {id(node.value) for node in ast.walk(tree) if isinstance(node, ast.Attribute)}
    bare = [node.id for node in ast.walk(tree) if isinstance(node, ast.Name) and node.id == "params"
            and isinstance(node.ctx, ast.Load) and id(node) not in attribute_roots]
    return reads, bare


def covered(key: str, listed: list[str]) -> bool:
    """Whether dvc.yaml's ``listed`` params cover the read of ``key``: a section read whole is
    covered by its keys, all but those that change no output (RuntimeParams.OUTPUT_FREE)."""
    if any(key == p or key.startswith(f"{p}.") for p in listed):
        return True
    head, _, name = key.partition(".")
    if name and name in getattr(getattr(Schema.model_fields.get(head), "annotation", None), "OUTPUT_FREE", ()):
        return True
    section = Schema.model_fields.get(key)
    fields = getattr(section.annotation, "model_fields", None) if section else None
    output_free = getattr(section.annotation, "OUTPUT_FREE", ()) if section else ()
    return bool(output_free) and all(covered(f"{key}.{name}", listed) for name in fields if name not in output_free)


def param_problems(dvc_yaml: dict, reads: dict[str, set[str]]) -> list[str]:
    """Keys a stage reads that dvc.yaml does not list (its outputs would go stale when they
    change), and listed keys it never reads (changing them would rerun it for nothing)."""
    problems = []
    for stage, spec in dvc_yaml["stages"].items():
        listed = [str(p) for p in spec.get("params", [])]
        problems += [f"{stage} reads {k} (not in dvc.yaml)" for k in sorted(reads[stage]) if not covered(k, listed)]
        problems += [f"{stage} lists {p} (never read)" for p in listed
                     if not any(k == p or k.startswith(f"{p}.") or covered(p, [k]) for k in reads[stage])]
    return problems


def test_dvc_yaml_params_are_what_each_stage_script_reads():
    reads = {}
    for stage in STAGES:
        reads[stage], bare = stage_reads((ROOT / "stages" / f"{stage}.py").read_text())
        assert bare == [], f"{stage} passes the whole params on"
    assert reads["soft_targets"] == {"seed", "teacher.safe_mode", "views.teacher", "views", "views.top_k",
                                     "views.cache_dtype"}
    assert param_problems(DVC_YAML, reads) == []
    # runtime.tensorboard changes no output: no stage lists it, so turning it on reruns nothing
    assert "runtime" in reads["distill"] and not any(
        str(p) in ("runtime", "runtime.tensorboard") for spec in DVC_YAML["stages"].values() for p in spec.get("params", []))

    stale = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    stale["stages"]["distill"]["params"].remove("temperature")
    stale["stages"]["export"]["params"].append("alpha")
    assert param_problems(stale, reads) == ["distill reads temperature (not in dvc.yaml)",
                                            "export lists alpha (never read)"]
    # a library function handed the whole params would read behind dvc.yaml's back
    assert stage_reads("params = Read.load()\nfit(params, params.seed)\n")[1] == ["params"]


# ---- output paths ----------------------------------------------------------------------------

def defined_paths() -> set[str]:
    fixed = {str(v) for v in vars(paths).values() if isinstance(v, Path)}
    per_stage = {str(f(stage)) for f in (paths.metrics_file, paths.live_dir) for stage in STAGES}
    per_role = {str(f(role)) for f in (paths.model_file, paths.repeats_dir) for role in paths.MODEL_ROLES}
    return fixed | per_stage | per_role


def test_dvc_yaml_outputs_are_paths_defined_in_kdflow_core_paths():
    declared = set()
    for spec in DVC_YAML["stages"].values():
        for entry in spec.get("outs", []) + spec.get("metrics", []):
            declared.add(next(iter(entry)) if isinstance(entry, dict) else entry)
    assert declared and declared <= defined_paths(), declared - defined_paths()


# ---- the docs ------------------------------------------------------------------------------

def test_readme_stage_table_matches_dvc_yaml():
    rows = re.findall(r"^\| `(\w+)` \| (.*?) \|", (ROOT / "README.md").read_text(), flags=re.M)
    table = {stage: re.findall(r"`([\w.]+)`", cell) for stage, cell in rows if stage in DVC_YAML["stages"]}
    assert table == {stage: [str(p) for p in spec["params"]] for stage, spec in DVC_YAML["stages"].items()}


def yaml_text(value) -> str:
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def documented_defaults(text: str) -> dict[str, str]:
    """`key` -> its documented default, from the tables of docs/params.md."""
    return dict(re.findall(r"^\| `([\w.]+)` \| `([^`]*)` \|", text, flags=re.M))


def schema_defaults() -> dict[str, str]:
    """Every key with its default: the whole schema, and each architecture family's knobs."""
    keys = flat(dumped(Schema()))
    keys.update(flat({name: family.knobs().model_dump() for name, family in FAMILIES.items() if not family.flat}))
    return {key: yaml_text(value) for key, value in keys.items()}


def test_docs_params_reference_documents_every_key_with_its_default():
    assert documented_defaults((ROOT / "docs/params.md").read_text()) == schema_defaults()


def undocumented_entries(methods_md: str, params_md: str) -> list[str]:
    """Registry entries the docs do not name: a method without a row in docs/methods.md's table,
    a source, family, preset, view kind or mix that docs/params.md never names in backticks."""
    from kdflow.data.sources import SOURCES

    missing = [f"method {m}" for m in METHODS if f"| `{m}`" not in methods_md]
    named = set(re.findall(r"`([\w.]+)`", params_md))
    for kind, names in (("dataset source", SOURCES), ("architecture family", FAMILIES), ("preset", PRESETS),
                        ("view kind", VIEW_KINDS), ("mix", MIXES)):
        missing += [f"{kind} {name}" for name in names if name not in named]
    return missing


def test_the_docs_name_every_registry_entry():
    methods_md, params_md = (ROOT / "docs/methods.md").read_text(), (ROOT / "docs/params.md").read_text()
    assert undocumented_entries(methods_md, params_md) == []
    assert undocumented_entries(methods_md.replace("| `dist`", "| dist"), params_md.replace("`crop`", "crop")) == \
        ["method dist", "view kind crop"]


def test_a_stale_default_in_the_docs_is_caught():
    text = (ROOT / "docs/params.md").read_text().replace("| `repeats` | `5` |", "| `repeats` | `3` |")
    stale = documented_defaults(text)
    assert {k for k in stale if stale[k] != schema_defaults()[k]} == {"repeats"}


def test_the_committed_run_keeps_its_teacher_check_and_calibration_results():
    """metrics/ and reports/ come from a real `dvc repro` of the committed params: on the default
    the teacher check stays silent; the temperature fitted on validation lowers the test ECE and
    NLL of the over-confident plain students, and leaves the already calibrated distilled students
    (the ones that ship) where they were (docs/results.md); accuracy is untouched."""
    evaluate = json.loads((ROOT / "metrics/evaluate.json").read_text())
    assert evaluate["teacher_check"]["teacher_clearly_better"] is True
    assert "Teacher check" not in (ROOT / "reports/summary.md").read_text()
    plain, distilled = evaluate["student_plain"], evaluate["student_distilled"]
    assert plain["ece_calibrated_mean"] < plain["ece_mean"] and plain["loss_calibrated_mean"] < plain["loss_mean"]
    assert abs(distilled["temperature_mean"] - 1) < 0.1
    assert abs(distilled["loss_calibrated_mean"] - distilled["loss_mean"]) < 0.01 * distilled["loss_mean"]
    export = json.loads((ROOT / "metrics/export.json").read_text())
    assert export["keras"]["accuracy"] == export["keras"]["uncalibrated_accuracy"] == distilled["accuracy"]
