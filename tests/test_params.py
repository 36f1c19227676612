import subprocess
import sys
import typing
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, minimal_params, validated
from kdflow.core import KdflowError
from kdflow.core.params import Params
from kdflow.data.sources import SOURCES
from kdflow.distill.methods import METHODS
from kdflow.models.families import FAMILIES, PRESETS, resolve
from kdflow.schema import Schema
from kdflow.views.kinds import VIEW_KINDS
from kdflow.views.params import ViewsParams


def one_of(names) -> str:
    """How pydantic lists the allowed names of a Literal."""
    quoted = [repr(n) for n in names]
    return f"Input should be {quoted[0]}" if len(quoted) == 1 else \
        f"Input should be {', '.join(quoted[:-1])} or {quoted[-1]}"


def test_valid_minimal_params_and_defaults():
    params = validated()
    assert resolve(params.student) == (FAMILIES["spec"], PRESETS["repo_student"].knobs)
    assert resolve(params.teacher)[1].conv_filters == [8]


@pytest.mark.parametrize(
    "overrides, expected",
    [
        ({"alpha": 1.5}, "alpha = 1.5: Input should be less than or equal to 1"),
        ({"alpha": -0.1}, "alpha = -0.1: Input should be greater than or equal to 0"),
        ({"temperature": 0}, "temperature = 0: Input should be greater than 0"),
        ({"temperature": "4"}, "temperature = '4': Input should be a valid number"),
        ({"seed": True}, "seed = True: Input should be a valid integer"),
        # the names of each extension point come from its registry
        ({"data": {"name": "imagenet"}}, "data.name = 'imagenet': " + one_of(SOURCES)),
        ({"student": {"arch": "resnet9000"}}, "student.arch = 'resnet9000': " + one_of([*PRESETS, *FAMILIES])),
        ({"views": {"kind": "blur"}}, "views.kind = 'blur': " + one_of(VIEW_KINDS)),
        ({"distill": {"method": "crd"}}, "distill.method = 'crd': " + one_of(METHODS)),
        ({"teacher": {"arch": "spec"}}, "teacher: arch 'spec' needs a 'spec' section"),
        ({"teacher": {"arch": "resnet20", "resnet": {"width": 2.0}}},
         "teacher: arch is 'resnet20': remove the 'resnet' section or set arch: resnet"),
        ({"student": {"arch": "resnet", "resnet": {"width": 0}}}, "student.resnet.width = 0: Input should be greater than 0"),
        ({"train_student": {"epochs": 0}}, "train_student.epochs = 0: Input should be greater than or equal to 1"),
        ({"train_student": {"epoch": 3}}, "train_student.epoch: unknown key"),
        ({"data": {"val_fraction": 0.45, "test_fraction": 0.45}}, "data: val_fraction + test_fraction = 0.9"),
        ({"data": {"name": "image_dir", "path": "imgs", "image_size": [2, 8]}},
         "data: image_size = [2, 8]: must be [height, width], each >= 4"),
        ({"data": {"name": "npz"}}, "data: name 'npz' reads data.path: set it to your .npz file"),
        ({"data": {"colour_mode": "rgb"}}, "data.colour_mode: unknown key"),
        ({"repeats": 0}, "repeats = 0: Input should be greater than or equal to 1"),
        ({"data": {"val_fraction": 0.7}}, "data.val_fraction = 0.7: Input should be less than 0.5"),
        ({"train_student": {"learning_rate": -1}}, "train_student.learning_rate = -1: Input should be greater than 0"),
        ({"distill": {"fitnet": {"weight": -2}}}, "distill.fitnet.weight = -2: Input should be greater than or equal to 0"),
        ({"train_student": {"batch_size": 2.5}}, "train_student.batch_size = 2.5: Input should be a valid integer"),
        ({"train_teacher": {"lr_floor": 2}}, "train_teacher.lr_floor = 2: Input should be less than or equal to 1"),
        ({"distill": {"dkd": {"beta": -1}}}, "distill.dkd.beta = -1: Input should be greater than or equal to 0"),
        ({"distill": {"dist": {"gamma": "high"}}}, "distill.dist.gamma = 'high': Input should be a valid number"),
        ({"distill": {"crd": {"weight": 1}}}, "distill.crd: unknown key"),
        ({"teacher": {"source": "url"}}, "teacher.source = 'url': Input should be 'train' or 'file'"),
        ({"train_student": {"augment": {"shift": 0.1}}}, "train_student.augment: not a key: the students' "
                                                         "augmentation is the `views` section"),
        ({"views": {"count": 4, "shift": 0}},
         "views: count = 4 with shift 0 and no flip: every view would be the image itself"),
        ({"views": {"count": -1}}, "views.count = -1: Input should be greater than or equal to 0"),
        ({"dkd": {"beta": 8}}, "dkd: unknown key"),  # a method's knobs live under distill
    ],
)
def test_bad_params_give_one_line_naming_the_key(overrides, expected):
    with pytest.raises(KdflowError) as info:
        Schema.checked(minimal_params(**overrides))
    message = str(info.value)
    assert expected in message
    assert "\n" not in message


def test_a_stage_validates_the_core_and_the_sections_it_reads():
    """A section typed by a package is checked by the stages that read it (their script's
    subclass of Params) and kept as given by the others: a stage that never reads it does not
    import (or depend on) the code that types it."""
    typo = minimal_params(views={"count": 4, "shfit": 1})
    core = Params.checked(typo)  # e.g. train_teacher: the views are not its business
    assert core.views == {"count": 4, "shfit": 1}  # a plain mapping: nothing typed to read by mistake

    class ReadsViews(Params):  # soft_targets, distill, train_scratch, evaluate
        views: ViewsParams = ViewsParams()

    with pytest.raises(KdflowError, match="views.shfit: unknown key"):
        ReadsViews.checked(typo)
    assert ReadsViews.checked(minimal_params(views={"count": 4})).views.count == 4
    # unknown top-level keys and core sections are every stage's business
    for bad, message in (({"tempreature": 4.0}, "tempreature: unknown key"),
                         ({"runtime": {"strategy": "gpu"}}, "runtime.strategy = 'gpu'"),
                         ({"views": 3}, "views = 3: Input should be a valid dictionary")):
        with pytest.raises(KdflowError, match=message):
            Params.checked(minimal_params(**bad))
    # the schema types exactly the sections the core keeps as mappings
    raw = [name for name, field in Params.model_fields.items() if field.annotation == dict[str, typing.Any]]
    assert sorted(raw) == ["data", "distill", "student", "teacher", "views"]
    assert all(Schema.model_fields[name].annotation is not dict for name in raw)


def test_a_missing_key_means_its_default_and_bad_files_are_one_line(tmp_path):
    raw = minimal_params()
    del raw["student"]
    del raw["train_teacher"]["epochs"]
    params = Schema.checked(raw)
    assert params.student == Schema().student
    assert params.train_teacher.epochs == Params().train_teacher.epochs == 15  # the teacher's own default
    with pytest.raises(KdflowError, match="file not found"):
        Params.load(tmp_path / "nope.yaml")
    broken = tmp_path / "params.yaml"
    broken.write_text("alpha: [0.1\n")
    with pytest.raises(KdflowError, match="not valid YAML"):
        Params.load(broken)
    broken.write_text(yaml.safe_dump([1, 2]))
    with pytest.raises(KdflowError, match="expected a mapping"):
        Params.load(broken)


def test_param_validation_does_not_import_tensorflow():
    """Every stage validates before it imports TensorFlow; `kdflow check` validates everything."""
    code = ("import sys; from kdflow.schema import Schema; Schema.load('params.yaml');"
            "import kdflow.cli, kdflow.search.commands; import stages.distill, stages.evaluate;"
            "print('tensorflow' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_kdflow_command_checks_params_and_names_its_tools(tmp_path):
    """The console entry point declared in pyproject.toml is kdflow.cli's main: the installed
    command where the package is installed (`pip install -e .`, as CI does), else the module."""
    import tomllib

    import kdflow.cli

    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {"kdflow": "kdflow.cli:main"} and callable(kdflow.cli.main)
    installed = Path(sys.executable).parent / "kdflow"
    cli = [str(installed)] if installed.exists() else [sys.executable, "-m", "kdflow.cli"]
    env = {"PYTHONPATH": str(ROOT), "PATH": str(Path(sys.executable).parent)}
    listed = subprocess.run([*cli, "--help"], capture_output=True, text=True, env=env)
    assert listed.returncode == 0 and all(name in listed.stdout for name in ("check", "search", "rank"))
    ok = subprocess.run([*cli, "check", str(ROOT / "params.yaml")], capture_output=True, text=True, env=env)
    assert ok.returncode == 0 and "params.yaml is valid" in ok.stdout, ok.stderr
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(minimal_params(distill={"dkd": {"beta": -1}})))
    bad = subprocess.run([*cli, "check", "params.yaml"], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert bad.returncode == 1 and bad.stderr.strip() == (
        "kdflow check: error: params.yaml: distill.dkd.beta = -1: Input should be greater than or equal to 0")
