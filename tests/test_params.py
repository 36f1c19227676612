import subprocess
import sys

import pytest
import yaml

from conftest import ROOT, minimal_params
from kdflow.errors import KdflowError
from kdflow.architectures import PRESETS
from kdflow.params import Params, load_params, validate


def test_valid_minimal_params_and_defaults():
    params = validate(minimal_params())
    assert params.student.resolved_spec() == PRESETS["repo_student"]
    assert params.teacher.resolved_spec().conv_filters == [8]


@pytest.mark.parametrize(
    "overrides, expected",
    [
        ({"alpha": 1.5}, "alpha = 1.5: Input should be less than or equal to 1"),
        ({"alpha": -0.1}, "alpha = -0.1: Input should be greater than or equal to 0"),
        ({"temperature": 0}, "temperature = 0: Input should be greater than 0"),
        ({"temperature": "4"}, "temperature = '4': Input should be a valid number"),
        ({"seed": True}, "seed = True: Input should be a valid integer"),
        ({"data": {"name": "imagenet"}}, "data.name = 'imagenet': Input should be 'mnist5k', 'mnist', 'fashion_mnist', 'cifar10', 'cifar100', 'npz' or 'image_dir'"),
        ({"student": {"arch": "resnet9000"}}, "student.arch = 'resnet9000': Input should be 'notebook_teacher'"),
        ({"teacher": {"arch": "spec"}}, "teacher: arch 'spec' needs a 'spec' section"),
        ({"train_student": {"epochs": 0}}, "train_student.epochs = 0: Input should be greater than or equal to 1"),
        ({"train_student": {"epoch": 3}}, "train_student.epoch: unknown key"),
        ({"data": {"val_fraction": 0.45, "test_fraction": 0.45}}, "data: val_fraction + test_fraction = 0.9"),
        ({"repeats": 0}, "repeats = 0: Input should be greater than or equal to 1"),
        ({"data": {"val_fraction": 0.7}}, "data.val_fraction = 0.7: Input should be less than 0.5"),
        ({"train_student": {"learning_rate": -1}}, "train_student.learning_rate = -1: Input should be greater than 0"),
        ({"fitnet": {"weight": -2}}, "fitnet.weight = -2: Input should be greater than or equal to 0"),
        ({"train_student": {"batch_size": 2.5}}, "train_student.batch_size = 2.5: Input should be a valid integer"),
        ({"train_teacher": {"lr_floor": 2}}, "train_teacher.lr_floor = 2: Input should be less than or equal to 1"),
        ({"dkd": {"beta": -1}}, "dkd.beta = -1: Input should be greater than or equal to 0"),
        ({"dist": {"gamma": "high"}}, "dist.gamma = 'high': Input should be a valid number"),
        ({"distill": {"method": "crd"}}, "distill.method = 'crd': Input should be 'kd'"),
        ({"teacher": {"source": "url"}}, "teacher.source = 'url': Input should be 'train' or 'file'"),
        ({"train_student": {"augment": {"shift": 0.1}}}, "train_student.augment: not a key: the students' "
                                                         "augmentation is the `views` section"),
        ({"views": {"count": 4, "shift": 0}},
         "views: count = 4 with shift 0 and no flip: every view would be the image"),
        ({"views": {"count": -1}}, "views.count = -1: Input should be greater than or equal to 0"),
    ],
)
def test_bad_params_give_one_line_naming_the_key(overrides, expected):
    with pytest.raises(KdflowError) as info:
        validate(minimal_params(**overrides))
    message = str(info.value)
    assert expected in message
    assert "\n" not in message


def test_a_missing_key_means_its_default_and_bad_files_are_one_line(tmp_path):
    raw = minimal_params()
    del raw["student"]
    del raw["train_teacher"]["epochs"]
    params = validate(raw)
    assert params.student == Params().student
    assert params.train_teacher.epochs == Params().train_teacher.epochs == 15  # the teacher's own default
    with pytest.raises(KdflowError, match="file not found"):
        load_params(tmp_path / "nope.yaml")
    broken = tmp_path / "params.yaml"
    broken.write_text("alpha: [0.1\n")
    with pytest.raises(KdflowError, match="not valid YAML"):
        load_params(broken)
    broken.write_text(yaml.safe_dump([1, 2]))
    with pytest.raises(KdflowError, match="expected a mapping"):
        load_params(broken)


def test_param_validation_does_not_import_tensorflow():
    code = (
        "import sys; from kdflow.params import load_params; load_params('params.yaml');"
        "print('tensorflow' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
