"""One source of truth: the facts written in more than one place agree, and each check is shown
to catch a deliberately stale entry.

- params.yaml spells out the schema's defaults (the core and every extension point's registry);
- each stage's code deps in dvc.yaml are exactly the files its script imports (transitively),
  and no module reaches a stage whose outputs it cannot change (the module -> stages table of
  docs/extending.md, printed by the test);
- each stage's params in dvc.yaml are exactly what it reads (recorded while the pipeline runs);
- dvc.yaml's outputs are the paths kdflow.paths defines;
- the README's stage table and docs/params.md agree with dvc.yaml and the schema.
"""

import ast
import json
import re
from pathlib import Path

import pytest
import yaml

from conftest import ROOT
from kdflow import losses, paths
from kdflow.architectures import FAMILIES
from kdflow.extensions import REGISTRIES, load_all, schema, validate_all
from kdflow.losses import METHODS
from kdflow.param_usage import ParamsView
from kdflow.params import Params

DVC_YAML = yaml.safe_load((ROOT / "dvc.yaml").read_text())
STAGES = list(DVC_YAML["stages"])


def leaf_keys(tree: dict, prefix: str = "") -> set[str]:
    keys = set()
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        keys |= leaf_keys(value, f"{dotted}.") if isinstance(value, dict) else {dotted}
    return keys


# ---- params.yaml vs the schema ---------------------------------------------------------------

def dumped(params: Params) -> dict:
    """The params as a tree; the optional architecture sections (`spec`, `resnet`) only when given
    (a null *value*, such as `patience: null`, is a setting and stays)."""
    def prune(tree):
        return {k: prune(v) if isinstance(v, dict) else v for k, v in tree.items()
                if not (k in FAMILIES and v is None)}
    return prune(params.model_dump())


def unselected_entry_keys() -> set[str]:
    """The keys that entries other than the default ones add (`views.<a kind's key>`,
    `distill.<method>.*`): params.yaml may leave them out, as a user's may (their defaults apply)."""
    keys, defaults = set(), schema()()
    for registry in REGISTRIES:
        selector = registry.key.rsplit(".", 1)[-1]
        for top, composed in registry.sections.items():
            chosen = getattr(getattr(defaults, top), selector)
            for entry in registry:
                if entry.section is None or entry.name == chosen:
                    continue
                nested = entry.name in composed.model_fields
                keys |= {f"{top}.{entry.name}.{f}" if nested else f"{top}.{f}" for f in entry.section.model_fields}
    return keys


def schema_disagreements(raw: dict) -> list[str]:
    """Keys where a params mapping differs from the schema's defaults, that it lacks (all but the
    unselected entries' keys), or that the schema does not know."""
    defaults = _flat(dumped(schema()()))
    given = _flat(dumped(validate_all(raw)))
    present = leaf_keys(raw)
    problems = sorted((set(defaults) - present - unselected_entry_keys()) | (present - set(defaults)))
    problems += [f"{k}: {given[k]!r} != default {defaults[k]!r}" for k in sorted(defaults) if given.get(k) != defaults[k]]
    return problems


def _flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        out.update(_flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
    return out


def test_params_yaml_spells_out_exactly_the_schema_defaults():
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert schema_disagreements(raw) == []
    assert load_all(ROOT / "params.yaml") == schema()()


def test_a_stale_default_in_params_yaml_is_caught():
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["repeats"] = 3
    del raw["train_teacher"]["augment"]["shift"]
    del raw["distill"]["dkd"]  # an unselected method's knobs may be left out
    # a key missing from params.yaml, and a value that is not the schema's default
    assert schema_disagreements(raw) == ["train_teacher.augment.shift", "repeats: 3 != default 5"]


# ---- code deps: what each stage imports ----------------------------------------------------

def imported_modules(path: Path) -> set[str]:
    """The kdflow modules a file imports, anywhere in it (lazy imports inside functions too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("kdflow")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("kdflow"):
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names
                      if (ROOT / node.module.replace(".", "/") / f"{alias.name}.py").exists()}
    return found


def code_deps(stage: str) -> set[str]:
    """stages/<stage>.py and every kdflow file it imports, transitively (the package's
    __init__.py runs on any import of it)."""
    files, todo = {f"stages/{stage}.py"}, [ROOT / "stages" / f"{stage}.py"]
    while todo:
        for module in imported_modules(todo.pop()):
            file = module.replace(".", "/") + ".py" if module != "kdflow" else "kdflow/__init__.py"
            for dep in {file, "kdflow/__init__.py"} - files:
                files.add(dep)
                todo.append(ROOT / dep)
    return files


def declared_code_deps(dvc_yaml: dict, stage: str) -> set[str]:
    return {d for d in dvc_yaml["stages"][stage]["deps"] if str(d).endswith(".py")}


@pytest.mark.parametrize("stage", STAGES)
def test_dvc_yaml_code_deps_are_what_the_stage_imports(stage):
    assert declared_code_deps(DVC_YAML, stage) == code_deps(stage)


def test_a_stale_code_dep_is_caught():
    stale = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    stale["stages"]["distill"]["deps"].remove("kdflow/losses.py")
    assert code_deps("distill") - declared_code_deps(stale, "distill") == {"kdflow/losses.py"}


def stages_of_modules(deps: dict[str, set[str]]) -> dict[str, list[str]]:
    """kdflow module -> the stages whose code deps include it (in pipeline order)."""
    modules = sorted(f"kdflow/{p.name}" for p in (ROOT / "kdflow").glob("*.py"))
    return {m: [stage for stage in STAGES if m in deps[stage]] for m in modules}


TRAINING = {"train_teacher", "distill", "train_scratch", "train_plain"}
# module -> the only stages it may reach: a change to it can change no other stage's outputs
MAY_REACH = {
    **dict.fromkeys(("kdflow/losses.py",), {"distill", "evaluate"}),  # the KD methods (evaluate names them)
    "kdflow/distillation.py": {"distill"},
    **dict.fromkeys(("kdflow/sources.py", "kdflow/splits.py"), {"prepare"}),
    "kdflow/architectures.py": TRAINING,
    # the views (and the teacher's random-resized crops, train_teacher.augment.crop_scale, are the crop kind's)
    "kdflow/views.py": {"train_teacher", "soft_targets", "distill", "train_scratch", "evaluate"},
    "kdflow/students.py": {"distill", "train_scratch", "train_plain"},
    # the teacher's training and import (its formats, its import check): the teacher alone
    **dict.fromkeys(("kdflow/teacher.py", "kdflow/teacher_formats.py", "kdflow/teacher_import_check.py"),
                    {"train_teacher"}),
    "kdflow/input_adapter.py": TRAINING,
    # the report and its metrics: never a training stage
    **dict.fromkeys(("kdflow/evaluation.py", "kdflow/comparison.py", "kdflow/report.py", "kdflow/teacher_check.py"),
                    {"evaluate"}),
    "kdflow/calibration.py": {"export", "evaluate"},
    # tools run outside the pipeline: editing them reruns nothing
    **dict.fromkeys(("kdflow/search.py", "kdflow/selection.py", "kdflow/cli.py", "kdflow/extensions.py"), set()),
}


def reach_problems(table: dict[str, list[str]]) -> list[str]:
    return [f"{m} reaches {', '.join(s for s in stages if s not in MAY_REACH[m])}" for m, stages in table.items()
            if m in MAY_REACH and not set(stages) <= MAY_REACH[m]]


def markdown_table(table: dict[str, list[str]]) -> str:
    lines = ["| module | stages that depend on it |", "|---|---|"]
    lines += [f"| `{m.removeprefix('kdflow/')}` | {', '.join(f'`{s}`' for s in stages) or '(none: a tool)'} |"
              for m, stages in table.items()]
    return "\n".join(lines)


def test_each_module_reaches_only_the_stages_it_can_change_and_the_docs_show_the_table():
    deps = {stage: code_deps(stage) for stage in STAGES}
    table = stages_of_modules(deps)
    print(markdown_table(table))  # the table of docs/extending.md (pytest -s shows it)
    assert reach_problems(table) == []
    assert set(MAY_REACH) <= set(table)  # every rule names a module that exists
    assert markdown_table(table) in (ROOT / "docs/extending.md").read_text()
    # The rule is shown to fire: a KD loss or a metric imported by a training stage.
    deps["train_teacher"] |= {"kdflow/losses.py"}
    deps["train_scratch"] |= {"kdflow/evaluation.py"}
    assert reach_problems(stages_of_modules(deps)) == ["kdflow/evaluation.py reaches train_scratch",
                                                       "kdflow/losses.py reaches train_teacher"]


# ---- params: what each stage reads ---------------------------------------------------------

def covered(key: str, listed: list[str]) -> bool:
    return any(key == p or key.startswith(f"{p}.") for p in listed)


def param_problems(dvc_yaml: dict, reads: dict[str, set[str]]) -> list[str]:
    """Keys a stage read that dvc.yaml does not list (its outputs would go stale when they
    change), and listed keys no stage run read (changing them would rerun it for nothing)."""
    problems = []
    for stage, spec in dvc_yaml["stages"].items():
        listed = [str(p) for p in spec.get("params", [])]
        problems += [f"{stage} reads {k} (not in dvc.yaml)" for k in sorted(reads[stage]) if not covered(k, listed)]
        problems += [f"{stage} lists {p} (never read)" for p in listed
                     if not any(k == p or k.startswith(f"{p}.") for k in reads[stage])]
    return problems


def method_reads() -> set[str]:
    """What building each registered distillation method reads (a method's knobs are read only
    when it is the one chosen, so no single pipeline run reads them all)."""
    keys: set[str] = set()
    for method in METHODS.names():
        view = ParamsView(validate_all({"distill": {"method": method}}), "", keys)
        losses.method(view.distill, view.temperature)
    return keys


@pytest.mark.e2e
def test_dvc_yaml_params_are_what_each_stage_reads(params_logs):
    reads = {stage: set() for stage in STAGES}
    for log in params_logs:  # the session's runs: default params, and byo + fitnet
        for line in log.read_text().splitlines():
            record = json.loads(line)
            reads[record["stage"]] |= set(record["keys"])
    assert all(reads.values()), reads
    reads["distill"] |= method_reads()
    assert param_problems(DVC_YAML, reads) == []

    stale = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    stale["stages"]["distill"]["params"].remove("temperature")
    stale["stages"]["export"]["params"].append("alpha")
    assert param_problems(stale, reads) == ["distill reads temperature (not in dvc.yaml)",
                                            "export lists alpha (never read)"]


# ---- output paths ----------------------------------------------------------------------------

def defined_paths() -> set[str]:
    fixed = {str(v) for v in vars(paths).values() if isinstance(v, Path)}
    per_stage = {str(f(stage)) for f in (paths.metrics_file, paths.live_dir) for stage in STAGES}
    per_role = {str(f(role)) for f in (paths.model_file, paths.repeats_dir) for role in paths.MODEL_ROLES}
    return fixed | per_stage | per_role


def test_dvc_yaml_outputs_are_paths_defined_in_kdflow_paths():
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
    """Every key with its default: the whole schema, and each architecture family's section."""
    flat = _flat(dumped(schema()()))
    flat.update(_flat({family.name: family.section().model_dump() for family in FAMILIES if not family.flat}))
    return {key: yaml_text(value) for key, value in flat.items()}


def test_docs_params_reference_documents_every_key_with_its_default():
    assert documented_defaults((ROOT / "docs/params.md").read_text()) == schema_defaults()


def undocumented_entries(methods_md: str, params_md: str) -> list[str]:
    """Registry entries the docs do not name: a method without a row in docs/methods.md's table,
    a source, family, preset or view kind that docs/params.md never names in backticks."""
    from kdflow.architectures import PRESETS

    missing = [f"method {m}" for m in METHODS.names() if f"| `{m}`" not in methods_md]
    named = set(re.findall(r"`([\w.]+)`", params_md))
    for registry in REGISTRIES:
        if registry is not METHODS:
            missing += [f"{registry.kind} {name}" for name in registry.names() if name not in named]
    return missing + [f"preset {name}" for name in PRESETS if name not in named]


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
    the teacher check stays silent, and the temperature fitted on validation lowers the test ECE
    and NLL of the students that ship (the distilled ones); accuracy is untouched."""
    evaluate = json.loads((ROOT / "metrics/evaluate.json").read_text())
    assert evaluate["teacher_check"]["teacher_clearly_better"] is True
    assert "Teacher check" not in (ROOT / "reports/summary.md").read_text()
    distilled = evaluate["student_distilled"]
    assert distilled["ece_calibrated_mean"] < distilled["ece_mean"]
    assert distilled["loss_calibrated_mean"] < distilled["loss_mean"]
    export = json.loads((ROOT / "metrics/export.json").read_text())
    assert export["keras"]["accuracy"] == export["keras"]["uncalibrated_accuracy"] == distilled["accuracy"]
