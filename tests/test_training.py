import numpy as np
import pytest

from conftest import distilled_students, logit_targets, make_prepared, minimal_params, scratch_students, validated
from kdflow.core import KdflowError
from kdflow.core.params import TrainParams
from kdflow.distill.methods import soft_kl
from kdflow.schema import Schema
from kdflow.teacher import train as teachers
from kdflow.training.loop import Trainer
from kdflow.training.objective import LABELS, TrainingModel


def only(students):
    (model, summary), = list(students)
    return model, summary


def test_students_are_paired_and_training_is_reproducible():
    params = validated(repeats=1)
    data = make_prepared()
    logits = {s: np.random.default_rng(0).normal(size=(len(data.xy(s)[1]), 3)).astype("float32")
              for s in ("train", "val")}
    scratch_a, summary_a = only(scratch_students(params, data))
    scratch_b, summary_b = only(scratch_students(params, data))
    distilled, summary_d = only(distilled_students(params, data, logit_targets(logits)))
    # Same seed => identical weights, bit for bit.
    for wa, wb in zip(scratch_a.get_weights(), scratch_b.get_weights()):
        np.testing.assert_array_equal(wa, wb)
    assert summary_a == summary_b
    # The distilled student trained on another loss, so its weights differ...
    assert any(not np.array_equal(a, d) for a, d in zip(scratch_a.get_weights(), distilled.get_weights()))
    # ...and it logs its soft-target term, the one in its loss: on the validation split of the
    # kept weights it equals the term computed directly.
    assert "soft_loss" in summary_d and "val_soft_loss" in summary_d and "soft_loss" not in summary_a
    x_val, y_val = data.xy("val")
    direct = soft_kl(logits["val"], distilled.predict(x_val, verbose=0), params.temperature)
    np.testing.assert_allclose(summary_d["val_soft_loss"], float(np.mean(direct)), rtol=1e-4)
    assert summary_a["epochs_run"] == 2


def test_paired_students_start_from_the_same_weights():
    params = validated(repeats=2, train_student={"epochs": 1, "learning_rate": 1e-9, "lr_floor": 1.0, "patience": None})
    data = make_prepared()
    logits = {s: np.zeros((len(data.xy(s)[1]), 3), "float32") for s in ("train", "val")}
    scratch = [m.get_weights() for m, _ in scratch_students(params, data)]
    distilled = [m.get_weights() for m, _ in distilled_students(params, data, logit_targets(logits))]
    assert len(scratch) == len(distilled) == 2
    for pair_s, pair_d in zip(scratch, distilled):
        for ws, wd in zip(pair_s, pair_d):
            np.testing.assert_allclose(ws, wd, atol=1e-6)  # lr ~ 0: both are still their shared init
    # ...while different repeats start from different weights (seed + i).
    assert not np.allclose(scratch[0][0], scratch[1][0])


def test_every_student_handed_out_is_its_own_model():
    """The repeats train one model in turn; each yielded student is a copy, so keeping them all
    (list(...)) keeps every repeat's weights, not N views of the last one."""
    params = validated(repeats=2)
    data = make_prepared()
    seen = []
    for model, _ in scratch_students(params, data):
        seen.append((model, [w.copy() for w in model.get_weights()]))  # the weights as handed out
    (first, first_weights), (second, second_weights) = seen
    assert first is not second
    for model, weights in seen:  # unchanged by the repeats that trained after it
        for a, b in zip(model.get_weights(), weights, strict=True):
            np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first_weights[0], second_weights[0])


def saved_state(checkpoint) -> list:
    """The arrays of a training checkpoint: the model's variables, then the optimizer's."""
    with np.load(checkpoint) as npz:
        return [npz[f"a{i}"] for i in range(len(npz.files) - 1)]


def test_a_later_repeat_equals_a_fresh_run_of_its_seed(tmp_path):
    """Repeats reuse one compiled model (traced once per stage); repeat 1 must still be exactly
    what a fresh stage with seed + 1 trains: weights, optimizer state and summary, bit for bit
    (the full state is what each repeat's checkpoint holds)."""
    base = minimal_params(repeats=2)
    data = make_prepared()
    logits = {s: np.random.default_rng(1).normal(size=(len(data.xy(s)[1]), 3)).astype("float32")
              for s in ("train", "val")}
    def trained(raw, cache, run_dir):
        params = Schema.checked(raw)
        return (scratch_students(params, data, run_dir=run_dir) if cache is None
                else distilled_students(params, data, logit_targets(cache), run_dir=run_dir))

    for cache in (None, logits):
        two, one = tmp_path / f"two_{cache is None}", tmp_path / f"one_{cache is None}"
        runs = [(m.get_weights(), summary) for m, summary in trained(base, cache, two)]
        fresh = only(trained({**base, "repeats": 1, "seed": base["seed"] + 1}, cache, one))
        weights, summary = runs[1]
        for a, b in zip(weights, fresh[0].get_weights(), strict=True):
            np.testing.assert_array_equal(a, b)
        for a, b in zip(saved_state(two / "repeat_1.npz"), saved_state(one / "repeat_0.npz"), strict=True):
            np.testing.assert_array_equal(a, b)
        assert summary == fresh[1]
        assert not np.array_equal(runs[0][0][0], weights[0])  # and the two repeats did differ


def test_teacher_learns_and_early_stopping_restores_the_best_epoch():
    params = validated(train_teacher={"epochs": 12, "batch_size": 16, "learning_rate": 0.01, "patience": 2})
    data = make_prepared()
    model, summary = teachers.train(params.teacher, params.train_teacher, params.seed, data)
    assert summary["val_accuracy"] >= 0.9  # the synthetic task is easy
    assert 1 <= summary["best_epoch"] <= summary["epochs_run"] <= 12
    x, y = data.xy("val")
    kept_acc = np.mean(np.argmax(model.predict(x, verbose=0), axis=1) == y)
    assert kept_acc == pytest.approx(summary["val_accuracy"], abs=1e-6)  # the weights are the best epoch's


def test_divergence_stops_with_a_clear_error():
    data = make_prepared()
    x, y = data.xy("train")
    from kdflow.models import families

    network = families.build(validated().student, data.input_shape, 3, name="m")

    class Exploding(TrainingModel):
        def compute_loss(self, *args, **kwargs):
            return super().compute_loss(*args, **kwargs) * np.float32("nan")

    model = Exploding(network.inputs, network.outputs)
    trainer = Trainer(model, TrainParams(epochs=3, learning_rate=1e-3), len(x), "train_student")
    with pytest.raises(KdflowError, match=r"train_student.learning_rate=0.001: training diverged"):
        trainer.fit((x, {LABELS: y}), (x, {LABELS: y}), seed=0)


def cached_targets(teacher, data, method, views=None) -> dict:
    """A teacher's logits and the method's features as the distilled students' targets, as the
    soft_targets and distill stages compute them (here without going through the disk)."""
    from kdflow.views import cache

    computed = cache.compute(teacher, data, views)
    targets = logit_targets({split: computed[split] for split in ("train", "val")})
    for split, sides in cache.teacher_features(teacher, data, views, method.features).items():
        targets[split].update(sides)
    return targets


def test_fitnet_trains_through_a_projection_and_ships_the_plain_student(in_tmp):
    from kdflow.distill import methods
    from kdflow.models.files import load_model, save_model
    from kdflow.views.cache import feature_target

    params = validated(repeats=1, distill={"method": "fitnet",
                                           "fitnet": {"teacher_layer": "dense0", "student_layer": "dense0"}})
    data = make_prepared()
    teacher, _ = teachers.train(params.teacher, params.train_teacher, params.seed, data)
    targets = cached_targets(teacher, data, methods.build(params.distill, params.temperature))
    assert targets["train"][feature_target("hint")].shape == (len(data.xy("train")[1]), 32)  # teacher dense_units [32]
    student, summary = only(distilled_students(params, data, targets))
    assert "hint_loss" in summary and "val_hint_loss" in summary
    assert summary["val_accuracy"] > 0.6  # 3 classes: it learned
    assert student.output_shape == (None, 3)  # the projection is not part of the student
    save_model("s.keras", student)
    assert "hint_projection" not in [layer.name for layer in load_model("s.keras", produced_by="distill").layers]


def test_fitnet_bad_layer_names_are_clear_errors():
    from kdflow.distill import methods

    data = make_prepared()
    params = validated(repeats=1, distill={"method": "fitnet", "fitnet": {"student_layer": "nope"}})
    teacher, _ = teachers.train(params.teacher, params.train_teacher.model_copy(update={"epochs": 1}), 0, data)
    wrong_teacher_layer = params.distill.model_copy(update={"fitnet": params.distill.fitnet.model_copy(
        update={"teacher_layer": "conv9"})})
    with pytest.raises(KdflowError, match=r"distill.fitnet.teacher_layer = 'conv9' is not a teacher layer; it has: .*dense0"):
        cached_targets(teacher, data, methods.build(wrong_teacher_layer, params.temperature))
    targets = cached_targets(teacher, data, methods.build(params.distill.model_copy(update={
        "fitnet": params.distill.fitnet.model_copy(update={"teacher_layer": "dense0"})}), params.temperature))
    with pytest.raises(KdflowError, match=r"distill.fitnet.student_layer = 'nope' is not a student layer"):
        only(distilled_students(params, data, targets))


def test_training_images_are_copied_to_tensorflow_once_per_array():
    from kdflow.training.inputs import ImageTensors, make_dataset

    rng = np.random.default_rng(0)
    x = rng.random((40, 4, 4, 1), dtype=np.float32)
    targets = {LABELS: rng.integers(0, 3, 40)}
    tensors = ImageTensors()  # a trainer's: one for all the repeats of a stage

    def batches(images):
        return [b[0].numpy() for b in make_dataset(images, targets, batch_size=16, seed=1, epochs=range(2),
                                                   tensors=tensors)]

    first = batches(x)
    assert [len(b) for b in first] == [16, 16, 8] * 2
    # Every sample once per epoch, in a seeded order that differs between epochs.
    np.testing.assert_array_equal(np.sort(np.concatenate(first[:3]).ravel()), np.sort(x.ravel()))
    assert not np.array_equal(first[0], first[3])
    # The same array again (the next repeat of a stage) reuses the tensor and reads the same batches...
    copy = tensors(x)
    for a, b in zip(first, batches(x), strict=True):
        np.testing.assert_array_equal(a, b)
    assert tensors(x) is copy
    # ...and another array of the same shape is never served the cached one.
    other = x + 1.0
    for a, b in zip(first, batches(other), strict=True):
        np.testing.assert_array_equal(a + 1.0, b)
    assert tensors(other) is not copy


def test_tensorboard_logs_carry_the_scalars_and_histograms_of_every_run(tmp_path):
    """runtime.tensorboard: Keras' TensorBoard callback in the one loop, read back with
    TensorFlow's own event reader."""
    import tensorflow as tf

    def tags(folder):
        found = {}
        for events in folder.glob("events.out.tfevents.*"):
            for event in tf.compat.v1.train.summary_iterator(str(events)):
                for value in event.summary.value:
                    found.setdefault(value.tag, []).append(event.step)
        return found

    data = make_prepared()
    params = validated(repeats=2, train_teacher={"epochs": 2, "batch_size": 32, "learning_rate": 0.003,
                                                 "lr_floor": 0.1, "amsgrad": False, "patience": None,
                                                 "augment": {"shift": 0.0}, "freeze_epochs": 1})
    teachers.train(params.teacher, params.train_teacher, params.seed, data, tensorboard_dir=tmp_path / "teacher_tb")
    list(distilled_students(params, data, logit_targets(
        {s: np.zeros((len(data.xy(s)[1]), 3), "float32") for s in ("train", "val")}),
        tensorboard_dir=tmp_path / "distill_tb"))
    runs = [tmp_path / "teacher_tb/head_only", tmp_path / "teacher_tb/teacher",
            tmp_path / "distill_tb/repeat_0", tmp_path / "distill_tb/repeat_1"]
    for run in runs:
        train, validation = tags(run / "train"), tags(run / "validation")
        epochs = [0, 1] if "distill" in str(run) else [0]  # the teacher: 1 frozen epoch, then 1 of all layers
        for scalar in ("epoch_loss", "epoch_accuracy", "epoch_hard_ce", "epoch_learning_rate"):
            assert train[scalar] == epochs, (run, scalar, train)
        assert validation["epoch_accuracy"] == epochs and validation["epoch_hard_ce"] == epochs
        assert any(tag.endswith("/histogram") and steps == epochs for tag, steps in train.items()), train
    assert tags(tmp_path / "distill_tb/repeat_0/train")["epoch_soft_loss"] == [0, 1]  # the method's term too
