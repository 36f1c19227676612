"""The stage scripts as a user runs them: exit codes, one-line errors, no partial outputs."""

import shutil

import yaml

from conftest import minimal_params, run_stage


def write_params(path, **overrides):
    (path / "params.yaml").write_text(yaml.safe_dump(minimal_params(**overrides)))


def test_bad_param_exits_nonzero_with_one_line_and_no_output(tmp_path):
    write_params(tmp_path, alpha=1.5)
    result = run_stage("distill", tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "kdflow distill: error: params.yaml: alpha = 1.5: Input should be less than or equal to 1"
    )
    assert "Traceback" not in result.stdout + result.stderr
    assert not (tmp_path / "models").exists() and not (tmp_path / "metrics").exists()


def test_unknown_dataset_lists_the_valid_names(tmp_path):
    write_params(tmp_path, data={"name": "imagenet"})
    result = run_stage("prepare", tmp_path)
    assert result.returncode == 1
    assert "data.name = 'imagenet'" in result.stderr and "'mnist5k'" in result.stderr
    assert not (tmp_path / "data").exists()


def test_missing_upstream_artifacts_name_the_stage_to_run(tmp_path):
    write_params(tmp_path)
    result = run_stage("train_teacher", tmp_path)
    assert result.returncode == 1
    assert "data/prepared/meta.json is missing: run `dvc repro prepare` first" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "models").exists()


def test_soft_targets_for_other_data_are_refused(tmp_path):
    write_params(tmp_path)
    assert run_stage("prepare", tmp_path).returncode == 0
    from kdflow.io import save_npz

    save_npz(tmp_path / "data/soft_targets/logits.npz", data_hash="0" * 64,
             train=[[0.0] * 10] * 3, val=[[0.0] * 10] * 3)
    result = run_stage("distill", tmp_path)
    assert result.returncode == 1
    assert "computed on other prepared data: rerun `dvc repro soft_targets`" in result.stderr
    assert not (tmp_path / "models").exists()
    shutil.rmtree(tmp_path / "data")
