import keras
import numpy as np
import pytest

from conftest import section
from kdflow.core import KdflowError
from kdflow.core.io import atomic_path
from kdflow.models.families import ArchSpec, build
from kdflow.models.files import load_model, save_model


def ModelParams(**values):  # noqa: N802 - a `student` section
    return section("student", **values)


@pytest.mark.parametrize(
    "arch, input_shape, params",
    [
        # Conv12(3x3) -> pool -> 13*13*12 -> Dense10: 120 + 20290
        ("notebook_student", (28, 28, 1), 20_410),
        # Conv12 -> pool -> Conv12 -> pool -> 5*5*12 -> Dense10: 120 + 1308 + 3010
        ("notebook_teacher", (28, 28, 1), 4_438),
        ("repo_student", (28, 28, 1), 784 * 128 + 128 + 1290),
        ("repo_teacher", (28, 28, 1), 784 * 512 + 512 + 512 * 256 + 256 + 256 * 128 + 128 + 1290),
    ],
)
def test_presets_match_the_reference_models(arch, input_shape, params):
    model = build(ModelParams(arch=arch), input_shape, 10, name="m")
    assert model.count_params() == params
    assert model.output_shape == (None, 10)
    # logits, not probabilities: no softmax in the model
    out = model(np.random.default_rng(0).uniform(size=(4, *input_shape)).astype("float32"))
    assert not np.allclose(np.asarray(out).sum(axis=1), 1.0)


def test_spec_form_with_batch_norm_and_dropout_follows_the_data_shape():
    spec = ArchSpec(conv_filters=[4, 8], batch_norm=True, dense_units=[16], dropout=0.5)
    model = build(ModelParams(arch="spec", spec=spec.model_dump()), (12, 12, 3), 7, name="m")
    names = [layer.name for layer in model.layers]
    assert {"bn0", "bn1", "dropout0"} <= set(names)
    assert model.input_shape == (None, 12, 12, 3) and model.output_shape == (None, 7)


def test_saved_model_is_byte_reproducible_and_loads_without_custom_objects(in_tmp):
    model = build(ModelParams(arch="repo_student"), (6, 6, 1), 3, name="m")
    model.compile(optimizer="adam", loss=lambda y, p: keras.ops.mean(p))  # a custom loss must not leak
    save_model("a.keras", model)
    save_model("b.keras", model)
    assert (in_tmp / "a.keras").read_bytes() == (in_tmp / "b.keras").read_bytes()
    loaded = keras.models.load_model("a.keras")  # plain Keras, default safe_mode
    x = np.ones((2, 6, 6, 1), "float32")
    np.testing.assert_allclose(loaded(x), model(x), rtol=1e-6)


def test_load_model_errors_name_the_stage(in_tmp):
    with pytest.raises(KdflowError, match=r"models/t.keras is missing: run `dvc repro train_teacher` first"):
        load_model("models/t.keras", produced_by="train_teacher")
    (in_tmp / "bad.keras").write_bytes(b"not a zip")
    with pytest.raises(KdflowError, match=r"could not be loaded .*dvc repro --force train_teacher"):
        load_model("bad.keras", produced_by="train_teacher")


def test_atomic_path_leaves_nothing_on_failure(in_tmp):
    (in_tmp / "keep.json").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path("keep.json") as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert (in_tmp / "keep.json").read_text() == "old"
    assert [p.name for p in in_tmp.iterdir()] == ["keep.json"]
