"""The two reference workflows' settings ship as DVC override lists (configs/*.txt), usable as
`dvc exp run $(sed 's/^/-S /' configs/<file>.txt)`. They need network for their datasets, so
here we check they apply (with DVC's own override parser) and validate to the settings the two
workflows used (docs/methods.md)."""

import shutil

import pytest
from dvc.utils.hydra import apply_overrides

from conftest import ROOT
from kdflow.models.families import PRESETS, resolve
from kdflow.schema import Schema
from kdflow.teacher.train import augmentation_on


def apply(tmp_path, name):
    params_file = tmp_path / "params.yaml"
    shutil.copy(ROOT / "params.yaml", params_file)
    overrides = (ROOT / "configs" / name).read_text().split()
    apply_overrides(str(params_file), overrides)
    return Schema.load(params_file)


def test_reference_repo_setting(tmp_path):
    p = apply(tmp_path, "reference_repo_fashion_mnist.txt")
    assert p.data.name == "fashion_mnist"
    assert not augmentation_on(p.train_teacher.augment)  # the reference trained its teacher without augmentation
    assert resolve(p.teacher)[1] == PRESETS["repo_teacher"].knobs
    assert resolve(p.student)[1] == PRESETS["repo_student"].knobs
    assert (p.alpha, p.temperature) == (0.9, 2)
    assert (p.train_teacher.batch_size, p.train_teacher.epochs, p.train_teacher.lr_floor) == (256, 50, 0.01)
    assert (p.train_student.lr_floor, p.train_student.amsgrad, p.train_student.patience) == (0.1, True, 5)


def test_reference_notebook_setting(tmp_path):
    p = apply(tmp_path, "reference_notebook_cifar10.txt")
    assert p.data.name == "cifar10"
    assert not augmentation_on(p.train_teacher.augment)  # the reference trained its teacher without augmentation
    assert resolve(p.teacher)[1] == PRESETS["notebook_teacher"].knobs
    assert resolve(p.student)[1] == PRESETS["notebook_student"].knobs
    assert (p.alpha, p.temperature) == (0.1, 10)
    for train in (p.train_teacher, p.train_student):
        # plain Adam at a constant rate, 5 epochs, batch 64, no early stopping
        assert (train.epochs, train.batch_size, train.lr_floor, train.amsgrad, train.patience) == \
            (5, 64, 1.0, False, None)


@pytest.mark.parametrize("name", ["reference_repo_fashion_mnist.txt", "reference_notebook_cifar10.txt"])
def test_every_override_names_an_existing_key(name):
    # `dvc exp run -S` refuses keys that are not in params.yaml; '~' deletes an existing one.
    import yaml

    committed = yaml.safe_load((ROOT / "params.yaml").read_text())
    for line in (ROOT / "configs" / name).read_text().split():
        key = line.lstrip("~").split("=")[0]
        node = committed
        for part in key.split("."):
            assert part in node, f"{key} is not in params.yaml"
            node = node[part]
