"""keras.applications architectures, fine-tuning a pretrained teacher, the teacher's crops,
mixed precision and the cached outputs read a batch at a time."""

import json
import zipfile

import keras
import numpy as np
import pytest

from conftest import distilled_students, logit_targets, make_prepared, section, validated
from kdflow.core import KdflowError
from kdflow.core.runner import deterministic
from kdflow.models import families
from kdflow.models import files as artifacts
from kdflow.teacher import train as teachers


def built(shape=(32, 32, 3), classes=3, **student):
    return families.build(section("student", **student), shape, classes, name="student_scratch")


def test_an_application_maps_the_unit_images_to_its_own_convention_and_saves_reproducibly(tmp_path):
    deterministic(0)
    model = built(arch="MobileNetV3Small", width=0.5, dropout=0.2)
    backbone = model.get_layer("MobileNetV3Small")
    assert model.get_layer("logits").units == 3 and model.get_layer("dropout").rate == 0.2
    x = np.random.default_rng(0).uniform(size=(4, 32, 32, 3)).astype("float32")
    # MobileNetV3 takes [0, 255] (its include_preprocessing rescales to [-1, 1] inside)
    pooled = keras.Model(model.inputs, model.get_layer("dropout").input)(x)
    np.testing.assert_allclose(pooled, backbone(x * 255.0), rtol=1e-5, atol=1e-5)
    # MobileNetV2 and ResNet50V2 take [-1, 1]
    assert built(arch="MobileNetV2", width=0.35).get_layer("input_range").offset == -1.0
    for run in ("a", "b"):
        artifacts.save_model(tmp_path / f"{run}.keras", model)
    assert (tmp_path / "a.keras").read_bytes() == (tmp_path / "b.keras").read_bytes()
    back = keras.models.load_model(tmp_path / "a.keras", safe_mode=True)  # no Lambda: loads safely
    np.testing.assert_allclose(back(x), model(x), rtol=1e-5, atol=1e-5)


def test_an_applications_problems_are_one_line_each(tmp_path):
    def error(shape=(32, 32, 3), **student):
        with pytest.raises(KdflowError) as caught:
            built(shape, **student)
        return str(caught.value)

    assert error((28, 28, 1), arch="MobileNetV3Small") == (
        "student.arch = MobileNetV3Small: needs images of at least 32x32 pixels, the model gets 28x28 "
        "(set data.image_size)")
    assert error(arch="ResNet50V2", width=0.5) == \
        "student.width = 0.5: ResNet50V2 takes no width (only the MobileNets do)"
    assert error(arch="MobileNetV2", input_range="byte").startswith("student.input_range = byte: MobileNetV2 maps")
    assert error(arch="MobileNetV2", weights="file", weights_file=str(tmp_path / "none.h5")) == \
        f"student.weights_file = {tmp_path / 'none.h5'}: no such file"
    # offline (this machine): the download fails with one line that says what to do
    assert "could not download MobileNetV2's ImageNet weights (offline?)" in error(arch="MobileNetV2",
                                                                                   weights="imagenet")
    # weights of another backbone, or of another width
    other = keras.applications.MobileNetV2(include_top=False, weights=None, input_shape=(32, 32, 3), alpha=0.35)
    other.save_weights(tmp_path / "v2_035.weights.h5")
    for student in ({"arch": "MobileNetV3Small"}, {"arch": "MobileNetV2", "width": 0.5}):
        assert error(**student, weights="file", weights_file=str(tmp_path / "v2_035.weights.h5")).startswith(
            f"student.weights_file = {tmp_path / 'v2_035.weights.h5'}: not weights for this")
    # the right file loads: the backbone starts from it
    loaded = built(arch="MobileNetV2", width=0.35, weights="file", weights_file=str(tmp_path / "v2_035.weights.h5"))
    for mine, theirs in zip(loaded.get_layer("mobilenetv2_0.35_32").get_weights(), other.get_weights()):
        np.testing.assert_array_equal(mine, theirs)
    with pytest.raises(Exception, match="width applies to a keras.applications arch, not resnet8"):
        section("student", arch="resnet8", width=0.5)
    # the file is a path of its own (a DVC dependency): the old spelling says where it goes
    with pytest.raises(Exception, match="give the file as weights_file: inputs/b0.h5 with weights: file"):
        section("student", arch="MobileNetV2", weights="inputs/b0.h5")
    with pytest.raises(Exception, match="weights: file reads weights_file: set it"):
        section("student", arch="MobileNetV2", weights="file")
    with pytest.raises(Exception, match="weights_file applies with weights: file"):
        section("student", arch="MobileNetV2", weights_file="inputs/b0.h5")


def test_fine_tuning_trains_the_logits_alone_first_then_every_layer_on_fresh_crops():
    data = make_prepared(shape=(12, 12, 1))
    tiny = {"epochs": 2, "batch_size": 16, "learning_rate": 0.01, "lr_floor": 1.0, "amsgrad": False,
            "patience": None, "augment": {"shift": 0.0, "crop_scale": [0.5, 1.0]}}
    params = validated(teacher={"arch": "spec", "spec": {"conv_filters": [4], "batch_norm": True}},
                       train_teacher={**tiny, "freeze_epochs": 1, "fine_tune_lr_scale": 1e-9})
    deterministic(params.seed)
    initial = families.build(params.teacher, data.input_shape, data.num_classes, name="teacher")
    model, summary = teachers.train(params.teacher, params.train_teacher, params.seed, data)
    assert summary["epochs_run"] == 2 and summary["head_only_epochs"] == 1
    for layer in model.layers:
        before_layer = initial.get_layer(layer.name)
        for before, after in zip(before_layer.trainable_weights, layer.trainable_weights):
            if layer.name == "logits":
                assert not np.allclose(before, after)  # the head trained...
            else:  # ...the rest only at ~0 learning rate afterwards
                np.testing.assert_allclose(before, after, atol=1e-6)
    assert all(layer.trainable for layer in model.layers)
    # without the frozen epochs, every layer moves
    everything = validated(teacher={"arch": "spec", "spec": {"conv_filters": [4], "batch_norm": True}}, train_teacher=tiny)
    moved, _ = teachers.train(everything.teacher, everything.train_teacher, everything.seed, data)
    assert not np.allclose(moved.get_layer("conv0").get_weights()[0], initial.get_layer("conv0").get_weights()[0])

    # the crops: epoch e sees view e of one table drawn from the seed, continuing after the frozen epochs
    crops = teachers.epoch_crops(params.train_teacher, params.seed, data)
    assert crops.table.shape == (len(data.xy("train")[1]), 2, 5)
    assert np.array_equal(crops.table, teachers.epoch_crops(params.train_teacher, params.seed, data).table)
    assert list(crops.choice(0, 1, 3).numpy()) == [1, 1, 1] and list(crops.after(1).choice(0, 0, 2).numpy()) == [1, 1]


def test_mixed_bfloat16_trains_in_16_bits_and_saves_and_exports_float32(tmp_path):
    from kdflow.export.forms import TfliteModel, save_saved_model, to_tflite
    from kdflow.models.logits import predict_logits

    data = make_prepared(n_per_class=30)
    params = validated(repeats=1)
    logits = {s: np.random.default_rng(0).normal(size=(len(data.xy(s)[1]), 3)).astype("float32") for s in ("train", "val")}
    keras.mixed_precision.set_dtype_policy("mixed_bfloat16")
    try:
        (student, summary), = list(distilled_students(params, data, logit_targets(logits)))
        assert student.get_layer("dense0").compute_dtype == "bfloat16"
        assert np.isfinite(summary["loss"]) and summary["accuracy"] > 0.5
    finally:
        keras.mixed_precision.set_dtype_policy("float32")
    artifacts.save_model(tmp_path / "student.keras", student)
    with zipfile.ZipFile(tmp_path / "student.keras") as saved:
        assert "mixed_" not in saved.read("config.json").decode()
    shipped = artifacts.load_model(tmp_path / "student.keras", produced_by="distill")
    assert {layer.compute_dtype for layer in shipped.layers} == {"float32"}
    x = data.xy("test")[0]
    np.testing.assert_allclose(predict_logits(shipped, x), predict_logits(student, x), atol=0.1)  # bf16 round-off
    save_saved_model(shipped, tmp_path / "saved_model")
    exported = TfliteModel(to_tflite(tmp_path / "saved_model"))
    np.testing.assert_allclose(exported.predict(x), predict_logits(shipped, x), rtol=1e-4, atol=1e-4)


def test_mixed_float16_scales_the_loss_and_skips_overflowing_steps():
    from kdflow.core.params import TrainParams
    from kdflow.training.loop import Trainer
    from kdflow.training.objective import training_model

    data = make_prepared()
    keras.mixed_precision.set_dtype_policy("mixed_float16")
    try:
        deterministic(0)
        network = built(data.input_shape, arch="repo_student")
        model = training_model(network)
        schedule = TrainParams(epochs=2, batch_size=16, patience=None)
        summary = Trainer(model, schedule, len(data.xy("train")[1]), "train_student").fit_prepared(data, 0)
        optimizer = model.optimizer
        assert isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
        # it started at 2^15 and halved on every overflowing step: a finite loss and a scale <= the start
        assert np.isfinite(summary["loss"]) and 0 < float(optimizer.dynamic_scale.numpy()) <= 2.0**15
        assert network.get_layer("logits").compute_dtype == "float16"
    finally:
        keras.mixed_precision.set_dtype_policy("float32")


def test_cached_outputs_read_a_batch_at_a_time_train_the_same_student_as_in_memory(tmp_path):
    from kdflow.core.shards import ShardedArray
    from kdflow.views import cache

    data = make_prepared()
    params = validated(repeats=1)
    rng = np.random.default_rng(1)
    logits = {s: rng.normal(size=(len(data.xy(s)[1]), 3)).astype("float32") for s in ("train", "val")}
    cache.save(logits, data, tmp_path / "cache")
    on_disk = cache.load(data, None, path=tmp_path / "cache")
    assert isinstance(on_disk["train"][cache.TEACHER_LOGITS], ShardedArray)
    assert isinstance(on_disk["val"][cache.TEACHER_LOGITS], np.ndarray)
    (a, _), = list(distilled_students(params, data, logit_targets(logits)))
    (b, _), = list(distilled_students(params, data, on_disk))
    for wa, wb in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_array_equal(wa, wb)


@pytest.mark.apps
def test_an_efficientnetv2_student_exports_to_savedmodel_and_tflite_float32_and_int8(tmp_path):
    from conftest import scratch_students
    from kdflow.export.forms import TfliteModel, export_student
    from kdflow.models.logits import predict_logits

    data = make_prepared(n_per_class=12, shape=(32, 32, 3))
    params = validated(repeats=1, student={"arch": "EfficientNetV2B0"},
                       train_student={"epochs": 1, "batch_size": 32, "learning_rate": 0.003, "lr_floor": 0.1,
                                      "amsgrad": False, "patience": None})
    student, _ = next(scratch_students(params, data))
    metrics, _ = export_student(student, data, tmp_path / "out", calibration_samples=16, seed=0)
    assert (tmp_path / "out/saved_model/saved_model.pb").is_file()
    x = data.xy("test")[0]
    shipped = keras.models.load_model(tmp_path / "out/student.keras", safe_mode=True)
    float_model = TfliteModel((tmp_path / "out/student_float32.tflite").read_bytes())
    np.testing.assert_allclose(float_model.predict(x), predict_logits(shipped, x), rtol=1e-3, atol=1e-3)
    int8 = TfliteModel((tmp_path / "out/student_int8.tflite").read_bytes())
    assert int8.input["dtype"] == np.int8 and int8.output["dtype"] == np.int8  # full-integer
    assert metrics["tflite_int8"]["size_bytes"] < metrics["tflite_float32"]["size_bytes"] / 3
    assert metrics["int8_accuracy_drop"] == round(metrics["keras"]["accuracy"] - metrics["tflite_int8"]["accuracy"], 6)


def colour_photos(folder, per_class: int, size: int, seed: int = 0) -> None:
    """An RGB image folder of three classes: a red, a green or a blue square of random size at a
    random place on a noisy background, as PNGs in class sub-folders."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for name, channel in (("red", 0), ("green", 1), ("blue", 2)):
        (folder / name).mkdir(parents=True)
        for i in range(per_class):
            image = rng.integers(0, 90, size=(size, size, 3), dtype=np.uint8)
            side = rng.integers(size // 4, size // 2)
            r, c = rng.integers(0, size - side, size=2)
            colour = rng.integers(20, 90, size=3)
            colour[channel] = rng.integers(170, 256)
            image[r:r + side, c:c + side] = colour
            Image.fromarray(image).save(folder / name / f"{i}.png")


@pytest.mark.apps
@pytest.mark.e2e
def test_a_mobilenet_student_of_an_efficientnet_teacher_on_an_image_folder_through_dvc_repro(tmp_path, monkeypatch):
    """keras.applications teacher and student trained from scratch on 48-px photos, crop views, the
    export run by LiteRT, through `dvc repro`: every model learned, in inference mode (their
    batch-norm statistics are re-estimated after training), and the int8 model keeps the accuracy."""
    import yaml

    from conftest import make_repo, sh
    from kdflow.core.prepared import load_prepared
    from kdflow.models import batch_norm
    from kdflow.models.logits import predict_logits

    repo = tmp_path / "repo"
    colour_photos(repo / "inputs/photos", per_class=80, size=48)
    tiny = {"batch_size": 32, "learning_rate": 0.002, "lr_floor": 0.1, "amsgrad": False, "patience": None}
    make_repo(repo, commit=False, repeats=2,
              data={"name": "image_dir", "path": "inputs/photos", "image_size": [48, 48], "val_fraction": 0.2,
                    "test_fraction": 0.25},
              teacher={"arch": "EfficientNetV2B0", "dropout": 0.1},
              student={"arch": "MobileNetV3Small", "width": 0.5},
              train_teacher={**tiny, "epochs": 12, "augment": {"shift": 0.0, "flip": True, "crop_scale": [0.6, 1.0]}},
              train_student={**tiny, "epochs": 12},
              views={"count": 2, "kind": "crop", "scale": [0.6, 1.0], "flip": True},
              export={"calibration_samples": 64})
    params = yaml.safe_load((repo / "params.yaml").read_text())
    del params["teacher"]["spec"]  # the tiny projects' teacher section, not this one's
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    sh(["git", "add", "-A"], repo)
    sh(["git", "commit", "-qm", "photos"], repo)
    output = sh(["dvc", "repro"], repo).stdout
    for line in output.splitlines():
        if "batch-norm statistics" in line or "warning" in line:
            print(line)
    assert "warning" not in output
    metrics = {stage: json.loads((repo / f"metrics/{stage}.json").read_text())
               for stage in ("train_teacher", "distill", "train_scratch", "export", "evaluate")}
    chance = 1 / 3
    # the teacher and every student learned, in inference mode: re-estimated statistics, not the moving averages
    teacher_bn = metrics["train_teacher"]["batch_norm"]
    assert teacher_bn["val_accuracy_after"] > chance + 0.4
    for stage in ("distill", "train_scratch"):
        for repeat in ("repeat_0", "repeat_1"):
            entry = metrics[stage][repeat]["batch_norm"]
            assert entry["val_accuracy_after"] > chance + 0.3, (stage, repeat, entry)
    # on test, in inference mode, the shipped student scores what it scores with batch statistics
    monkeypatch.chdir(repo)
    x_test, y_test = load_prepared(("test",)).xy("test")
    student = artifacts.load_model("models/student_distilled.keras", produced_by="distill")
    inference, batch = (float(np.mean(predicted == y_test))
                        for predicted in batch_norm.mode_predictions(student, x_test, 32, 0))
    assert inference == float(np.mean(predict_logits(student, x_test).argmax(axis=1) == y_test))
    print(f"student_distilled repeat 0 on test: {inference:.3f} in inference mode, {batch:.3f} with batch statistics")
    assert inference > chance + 0.3 and abs(inference - batch) <= 0.05
    exported = metrics["export"]
    assert exported["keras"]["accuracy"] > chance + 0.3
    # the float TFLite model is the Keras student; int8 is full-integer, smaller, and keeps the accuracy
    assert exported["tflite_float32"]["accuracy"] == exported["keras"]["accuracy"]
    assert exported["tflite_int8"]["size_bytes"] < exported["tflite_float32"]["size_bytes"]
    assert abs(exported["int8_accuracy_drop"]) <= 0.01
    shipped = keras.models.load_model(repo / "export/student.keras", safe_mode=True)
    assert shipped.get_layer("student_distilled").get_layer("MobileNetV3Small").count_params() > 0
    assert sh(["dvc", "status"], repo).stdout.strip() == "Data and pipelines are up to date."
