"""Teachers as people have them: every format (.keras, legacy .h5, SavedModel), a softmax in
each of its forms, another input range, class order or resolution, and every refusal. Each
teacher is built and saved here, with hand-set weights where it must be good: a bright column
marks the class, so a teacher that reads it right is right on every image."""

import re

import keras
import numpy as np
import pytest
import tensorflow as tf
import yaml
from scipy.special import softmax

from conftest import validated
from kdflow.core import KdflowError
from kdflow.core.prepared import load_prepared
from kdflow.data.split import prepare
from kdflow.models import files as artifacts
from kdflow.teacher import imported as teachers
from kdflow.views import cache as soft_targets

CLASSES = ("p", "q", "r")
SHAPE = (8, 8, 1)


@pytest.fixture
def data(in_tmp):
    """3 classes, 8x8 grey, 40 images each (24 for validation): class c has column c bright."""
    from conftest import section

    rng = np.random.default_rng(0)
    y = np.repeat(np.asarray(CLASSES), 40)
    x = rng.integers(0, 60, size=(len(y), *SHAPE[:2]), dtype=np.uint8)
    for i, label in enumerate(y):
        x[i, :, CLASSES.index(label)] = 255
    np.savez(in_tmp / "mine.npz", x_train=x, y_train=y)
    prepare(section("data", name="npz", path=str(in_tmp / "mine.npz"), val_fraction=0.2, test_fraction=0.2), seed=0)
    return load_prepared()


def scores(image, pixel_max=1.0, order=(0, 1, 2)):
    """Per-class ReLU scores of the column that marks each class (5 for the bright column, 0
    for the others, on images in [0, pixel_max]); output i scores class ``order[i]``."""
    kernel = np.zeros((int(np.prod(image.shape[1:])), len(order)), np.float32)
    for i, c in enumerate(order):
        mask = np.zeros(image.shape[1:], np.float32)
        mask[:, c] = 1.0 / pixel_max
        kernel[:, i] = mask.ravel()
    flat = keras.layers.Flatten(name="features")(image)
    dense = keras.layers.Dense(len(order), activation="relu", name="scores")
    h = dense(flat)
    dense.set_weights([kernel, np.full(len(order), -3.0, np.float32)])
    return h


def logits_net(**kwargs):
    inputs = keras.Input(SHAPE)
    return keras.Model(inputs, scores(inputs, **kwargs))


def with_softmax(form: str, order=(0, 1, 2)) -> keras.Model:
    """The logits net with its softmax as a layer or as the last Dense's activation."""
    inputs = keras.Input(SHAPE)
    h = scores(inputs, order=order)
    if form == "layer":
        return keras.Model(inputs, keras.layers.Softmax(name="probs")(h))
    head = keras.layers.Dense(len(order), activation="softmax", name="probs")
    out = head(h)
    head.set_weights([np.eye(len(order), dtype=np.float32), np.zeros(len(order), np.float32)])
    return keras.Model(inputs, out)


class GraphTeacher(tf.Module):
    """A SavedModel made without Keras: softmax inside the graph, two outputs."""

    def __init__(self, pixel_max=1.0, order=(0, 1, 2)):
        super().__init__()
        kernel = np.zeros((64, len(order)), np.float32)
        for i, c in enumerate(order):
            mask = np.zeros(SHAPE, np.float32)
            mask[:, c] = 1.0 / pixel_max
            kernel[:, i] = mask.ravel()
        self.kernel = tf.Variable(kernel)

    @tf.function(input_signature=[tf.TensorSpec([None, *SHAPE], tf.float32, name="pixels")])
    def serve(self, pixels):
        logits = tf.nn.relu(tf.reshape(pixels, (-1, 64)) @ self.kernel - 3.0)
        return {"probabilities": tf.nn.softmax(logits), "scores": logits}


def save_graph(path, module=None, signatures=None):
    module = module or GraphTeacher()
    tf.saved_model.save(module, str(path), signatures=signatures or {"serving_default": module.serve})
    return path


def import_teacher(path, data, **extra):
    params = validated(teacher={"source": "file", "path": str(path), "arch": "repo_teacher", **extra})
    return teachers.import_file(params.teacher, params.seed, data, log=lambda line: printed.append(line))


printed: list[str] = []


def cached_probabilities(model, data) -> np.ndarray:
    return softmax(soft_targets.compute(model, data)["train"].astype(np.float64), axis=1)


# Each writes a teacher whose output i scores the column order[i] (columns 0, 1, 2 mark p, q, r).
FORMS = {
    "keras, Softmax layer": lambda p, o=(0, 1, 2): with_softmax("layer", o).save(p / "t.keras") or p / "t.keras",
    "keras, softmax activation": lambda p, o=(0, 1, 2): with_softmax("activation", o).save(p / "t.keras")
    or p / "t.keras",
    "h5, Softmax layer": lambda p, o=(0, 1, 2): with_softmax("layer", o).save(p / "t.h5") or p / "t.h5",
    "h5, softmax activation": lambda p, o=(0, 1, 2): with_softmax("activation", o).save(p / "t.h5") or p / "t.h5",
    "SavedModel from model.export": lambda p, o=(0, 1, 2): with_softmax("layer", o).export(p / "exported",
                                                                                          verbose=False)
    or p / "exported",
    "SavedModel from tf.Module": lambda p, o=(0, 1, 2): save_graph(p / "graph", GraphTeacher(order=o)),
}


@pytest.mark.parametrize("form", FORMS)
def test_every_format_caches_the_teachers_own_probabilities(form, data, in_tmp):
    path = FORMS[form](in_tmp)
    extra = {"output_key": "probabilities"} if form == "SavedModel from tf.Module" else {}
    printed.clear()
    model, summary = import_teacher(path, data, **extra)
    assert any("outputs are probabilities" in line for line in printed), printed
    probabilities = teacher_probabilities(path, data.xy("train")[0], extra.get("output_key"))
    np.testing.assert_allclose(cached_probabilities(model, data), probabilities, atol=1e-6)
    assert summary["val_accuracy"] == 1.0

    # The pipeline's teacher file: byte-identical when saved twice, the same outputs when loaded
    # back with safe_mode (a SavedModel's graph travels inside it).
    artifacts.save_model(in_tmp / "a.keras", model)
    again, _ = import_teacher(path, data, **extra)
    artifacts.save_model(in_tmp / "b.keras", again)
    assert (in_tmp / "a.keras").read_bytes() == (in_tmp / "b.keras").read_bytes()
    loaded = artifacts.load_model(in_tmp / "a.keras", produced_by="train_teacher")
    assert np.array_equal(soft_targets.compute(loaded, data)["train"], soft_targets.compute(model, data)["train"])


def teacher_probabilities(path, x, output_key=None) -> np.ndarray:
    """What the teacher file itself outputs for ``x``: a SavedModel's own serving signature, or the Keras model."""
    if path.is_dir():
        own = tf.saved_model.load(str(path)).signatures["serving_default"]
        (input_key,) = own.structured_input_signature[1]
        outputs = own(**{input_key: tf.constant(x)})
        return outputs[output_key or next(iter(outputs))].numpy()
    return keras.models.load_model(path, compile=False)(x).numpy()


@pytest.mark.parametrize("form", FORMS)
def test_a_teacher_of_more_classes_teaches_the_datas_renormalised(form, data, in_tmp):
    """A 5-class teacher (classes s and t are not in the data) on the 3-class data: the data's
    classes select its outputs, and its distribution is renormalised over them."""
    path = FORMS[form](in_tmp, (3, 2, 0, 4, 1))
    names = ["s", "r", "p", "t", "q"]
    extra = {"output_key": "probabilities"} if form == "SavedModel from tf.Module" else {}
    with pytest.raises(KdflowError, match="it outputs 5 scores, but the prepared data has 3 classes: name its outputs "
                                          r"\(teacher.classes or teacher.classes_file"):
        import_teacher(path, data, **extra)
    (in_tmp / "names.txt").write_text("\n".join(names) + "\n")
    for given in ({"classes": names}, {"classes_file": str(in_tmp / "names.txt")}):
        printed.clear()
        model, summary = import_teacher(path, data, **extra, **given)
        assert summary["val_accuracy"] == 1.0
        assert "train_teacher: the data's 3 classes are 3 of the teacher's 5: its distribution is renormalised " \
               "over them" in printed
        x_train = data.xy("train")[0]
        kept = teacher_probabilities(path, x_train, extra.get("output_key"))[:, [2, 4, 1]]  # p, q, r
        np.testing.assert_allclose(cached_probabilities(model, data), kept / kept.sum(axis=1, keepdims=True),
                                   atol=1e-6)
    artifacts.save_model(in_tmp / "wide.keras", model)  # the pipeline's teacher file loads back with safe_mode
    loaded = artifacts.load_model(in_tmp / "wide.keras", produced_by="train_teacher")
    assert np.array_equal(soft_targets.compute(loaded, data)["train"], soft_targets.compute(model, data)["train"])
    with pytest.raises(KdflowError, match="teacher.classes: the data's class 'q' is not one of the teacher's 5 classes$"):
        import_teacher(path, data, **extra, classes=["s", "r", "p", "t", "u"])


def test_the_reference_repos_softmax_layer_teacher_gives_its_networks_logits(data, in_tmp):
    """The Fashion-MNIST repo's teacher: an MLP ending in a separate Softmax layer (untrained
    here, so the import check is off)."""
    keras.utils.set_random_seed(3)
    inputs = keras.Input(SHAPE)
    h = keras.layers.Flatten()(inputs)
    for units in (512, 256, 128):
        h = keras.layers.Dense(units, activation="relu")(h)
    network = keras.Model(inputs, keras.layers.Dense(3)(h))
    keras.Model(inputs, keras.layers.Softmax()(network.output)).save(in_tmp / "repo.keras")
    model, _ = import_teacher(in_tmp / "repo.keras", data, check=False)
    cached = soft_targets.compute(model, data)["train"]
    own = network.predict(data.xy("train")[0], verbose=0)
    constant = cached - own  # log softmax(z) = z - logsumexp(z): one constant per row
    np.testing.assert_allclose(constant, constant[:, :1].repeat(3, axis=1), atol=1e-5)
    np.testing.assert_allclose(constant[:, 0], -np.log(np.exp(own).sum(axis=1)), atol=1e-5)


def test_logits_are_kept_as_they_are_and_sigmoids_refused(data, in_tmp):
    logits_net().save(in_tmp / "logits.keras")
    printed.clear()
    model, _ = import_teacher(in_tmp / "logits.keras", data)
    assert any("outputs are logits" in line for line in printed)
    x = data.xy("val")[0]
    assert np.array_equal(model.predict(x, verbose=0), logits_net()(x).numpy())

    inputs = keras.Input(SHAPE)
    keras.Model(inputs, keras.layers.Activation("sigmoid")(scores(inputs))).save(in_tmp / "sigmoid.keras")
    with pytest.raises(KdflowError, match=r"outputs lie in \[0, 1\] but rows do not sum to 1 .*independent "
                                          r"per-class scores \(sigmoids\) are not a single-label distribution"):
        import_teacher(in_tmp / "sigmoid.keras", data)
    with pytest.raises(KdflowError, match="teacher.outputs = probabilities, but its outputs"):
        import_teacher(in_tmp / "logits.keras", data, outputs="probabilities")
    # the user says they are logits: in [0, 1] they make a near-uniform teacher, which is said
    with pytest.raises(KdflowError, match="teacher val accuracy 1.00, but its outputs are near uniform"):
        import_teacher(in_tmp / "sigmoid.keras", data, outputs="logits")
    printed.clear()
    import_teacher(in_tmp / "sigmoid.keras", data, outputs="logits", check=False)
    assert "near uniform" in printed[-1] and "going on: teacher.check is false" in printed[-1]


def test_a_byte_range_teacher_is_named_then_works(data, in_tmp):
    inputs = keras.Input(SHAPE)
    keras.Model(inputs, keras.layers.Softmax()(scores(inputs, pixel_max=255.0))).save(in_tmp / "byte.h5")
    with pytest.raises(KdflowError) as info:
        import_teacher(in_tmp / "byte.h5", data)
    assert str(info.value).startswith("teacher val accuracy 0.33 with inputs in [0, 1], 1.00 with [0, 255]: "
                                      "set teacher.input_range: byte")
    printed.clear()
    model, summary = import_teacher(in_tmp / "byte.h5", data, input_range="byte")
    assert summary["val_accuracy"] == 1.0
    assert model.get_layer("input_range").get_config()["scale"] == 255.0
    assert printed[-1].startswith("train_teacher: teacher val accuracy 1.0000 with inputs in [0, 255] (also tried: "
                                  "[0, 1] 0.3333")


def test_a_permuted_teacher_is_named_then_works(data, in_tmp):
    save_graph(in_tmp / "graph", GraphTeacher(order=(1, 2, 0)))
    with pytest.raises(KdflowError) as info:
        import_teacher(in_tmp / "graph", data, output_key="probabilities")
    assert str(info.value).startswith('teacher val accuracy 0.00 in the data\'s class order, 1.00 reading its outputs '
                                      'as the classes ["q", "r", "p"]: set teacher.classes: ["q", "r", "p"]')
    model, summary = import_teacher(in_tmp / "graph", data, output_key="probabilities", classes=["q", "r", "p"])
    assert summary["val_accuracy"] == 1.0
    # Both at once, as a teacher from elsewhere may be: one stop names both settings.
    save_graph(in_tmp / "both", GraphTeacher(pixel_max=255.0, order=(2, 0, 1)))
    with pytest.raises(KdflowError, match=r"0.33 with inputs in \[0, 1\], 1.00 with \[0, 255\] and its outputs read "
                                          r'in another class order: set teacher.input_range: byte and teacher.classes: '
                                          r'\["r", "p", "q"\]'):
        import_teacher(in_tmp / "both", data, output_key="probabilities")
    with pytest.raises(KdflowError, match="teacher.classes: the data's class 'p' is not one of the teacher's 3 classes"):
        import_teacher(in_tmp / "graph", data, output_key="probabilities", classes=["q", "r", "x"])


def test_a_higher_resolution_teacher_teaches_through_image_size(data, in_tmp):
    inputs = keras.Input((16, 16, 1))
    keras.Model(inputs, scores(keras.layers.AveragePooling2D(2)(inputs))).save(in_tmp / "big.keras")
    with pytest.raises(KdflowError, match=r"its input size 16x16 does not match the prepared data's 8x8: set "
                                          r"teacher.image_size: \[16, 16\]"):
        import_teacher(in_tmp / "big.keras", data)
    model, summary = import_teacher(in_tmp / "big.keras", data, image_size=[16, 16])
    assert summary["val_accuracy"] == 1.0 and model.input_shape == (None, *SHAPE)
    with pytest.raises(KdflowError, match=r"it takes 16x16 images, not teacher.image_size \[12, 12\]"):
        import_teacher(in_tmp / "big.keras", data, image_size=[12, 12])


def test_a_teacher_near_chance_stops_unless_told_to_go_on(data, in_tmp):
    inputs = keras.Input(SHAPE)
    keras.Model(inputs, keras.layers.Dense(3, kernel_initializer="zeros")(keras.layers.Flatten()(inputs))).save(
        in_tmp / "blind.keras")
    with pytest.raises(KdflowError, match=r"teacher val accuracy 0.33 is near chance \(0.33 for 3 classes\): check "
                                          r"its input range \(teacher.input_range, now \[0, 1\]\), its class order"):
        import_teacher(in_tmp / "blind.keras", data)
    printed.clear()
    import_teacher(in_tmp / "blind.keras", data, check=False)
    assert "going on: teacher.check is false" in printed[-1]


def test_code_in_a_teacher_file_is_refused_and_never_runs(data, in_tmp):
    marker = in_tmp / "ran"  # what the Lambda leaves behind whenever it runs
    inputs = keras.Input(SHAPE)
    code = keras.Model(inputs, scores(keras.layers.Lambda(
        lambda t: (__import__("pathlib").Path("ran").touch(), t)[1])(inputs)))
    marker.unlink()
    for name in ("code.h5", "code.keras"):
        code.save(in_tmp / name)
        with pytest.raises(KdflowError) as info:
            import_teacher(in_tmp / name, data)
        assert "Lambda layer" in str(info.value) and "teacher.safe_mode: false" in str(info.value)
        assert not marker.exists()
    import_teacher(in_tmp / "code.h5", data, safe_mode=False)  # trusted: it loads, and its code ran
    assert marker.exists()

    class Reader(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, *SHAPE], tf.float32)])
        def serve(self, images):
            size = tf.cast(tf.strings.length(tf.io.read_file("/etc/hostname")), tf.float32)
            return {"out": tf.reshape(images, (-1, 64))[:, :3] + size}

    reader = Reader()
    tf.saved_model.save(reader, str(in_tmp / "reader"), signatures={"serving_default": reader.serve})
    with pytest.raises(KdflowError, match="signature 'serving_default' uses ReadFile, which reach the file system"):
        import_teacher(in_tmp / "reader", data)


def test_broken_and_ambiguous_teachers_get_one_line(data, in_tmp):
    (in_tmp / "broken.keras").write_bytes(b"not a zip")
    (in_tmp / "broken.h5").write_bytes(b"not hdf5")
    (in_tmp / "folder").mkdir()
    inputs = [keras.Input(SHAPE), keras.Input(SHAPE)]
    keras.Model(inputs, keras.layers.Dense(3)(keras.layers.Flatten()(keras.layers.Add()(inputs)))).save(
        in_tmp / "two.keras")
    logits_net().save_weights(in_tmp / "only.weights.h5")
    (in_tmp / "only.weights.h5").rename(in_tmp / "weights.h5")
    module = GraphTeacher()
    save_graph(in_tmp / "two_signatures", module, {"a": module.serve, "b": module.serve})
    expected = {
        "broken.keras": r"teacher.path = .*broken.keras: not a loadable Keras model",
        "broken.h5": r"teacher.path = .*broken.h5: not a readable HDF5 file",
        "folder": r"teacher.path = .*folder: a directory, but not a SavedModel \(no saved_model.pb in it\)",
        "two.keras": r"the model has 2 inputs and 1 outputs; a teacher takes one image input",
        "weights.h5": r"weights.h5: holds weights only, no model",
        "two_signatures": r"it has several signatures \(a, b\): choose one with teacher.signature",
        "missing.keras": r"missing.keras: not found",
    }
    for name, message in expected.items():
        with pytest.raises(KdflowError, match=message):
            import_teacher(in_tmp / name, data)
    with pytest.raises(KdflowError, match=r"it has several outputs of signature 'b' \(probabilities, scores\): "
                                          r"choose one with teacher.output_key"):
        import_teacher(in_tmp / "two_signatures", data, signature="b")
    with pytest.raises(KdflowError, match=r"teacher.signature = 'c': not among the signatures of .*: a, b"):
        import_teacher(in_tmp / "two_signatures", data, signature="c")
    _, summary = import_teacher(in_tmp / "two_signatures", data, signature="b", output_key="scores")
    assert summary["val_accuracy"] == 1.0


def test_a_serving_teacher_that_takes_uint8_pixels(data, in_tmp):
    """TF Serving models often take uint8 images: the [0, 255] mapping is rounded, then cast."""

    class Uint8Teacher(GraphTeacher):
        @tf.function(input_signature=[tf.TensorSpec([None, *SHAPE], tf.uint8, name="pixels")])
        def serve_bytes(self, pixels):
            return self.serve(tf.cast(pixels, tf.float32) / 255.0)

    module = Uint8Teacher()
    save_graph(in_tmp / "bytes", module, {"serving_default": module.serve_bytes})
    model, summary = import_teacher(in_tmp / "bytes", data, input_range="byte", output_key="scores")
    assert summary["val_accuracy"] == 1.0
    x = np.asarray(data.xy("val")[0][:])
    own = module.serve(tf.constant(np.round(x * 255) / 255))["scores"].numpy()
    np.testing.assert_allclose(model.predict(x, verbose=0), own, atol=1e-5)


def test_teacher_file_settings_are_checked_with_the_params():
    with pytest.raises(KdflowError, match="teacher: classes applies to a teacher from a file"):
        validated(teacher={"arch": "repo_teacher", "classes": ["a", "b"]})
    with pytest.raises(KdflowError, match="set it to a .keras or .h5 model file or a SavedModel directory"):
        validated(teacher={"arch": "repo_teacher", "source": "file"})
    with pytest.raises(KdflowError, match=r"std \[0.0\] must be positive"):
        validated(student={"arch": "repo_student", "input_range": {"mean": [0.5], "std": [0.0]}})
    cfg = validated(teacher={"arch": "repo_teacher", "source": "file", "path": "t.keras", "classes": [3, 1, 2]})
    assert cfg.teacher.class_order == ["3", "1", "2"]  # YAML reads digit names as numbers


def test_a_students_input_range_is_its_first_layer():
    from kdflow.models.families import build

    student = build(validated(student={"arch": "repo_student", "input_range": "symmetric"}).student, SHAPE, 3, "s")
    layer = student.get_layer("input_range")
    assert (layer.scale, layer.offset) == (2.0, -1.0)
    x = np.full((1, *SHAPE), 0.5, np.float32)
    assert np.array_equal(keras.Model(student.inputs, layer.output)(x).numpy(), np.zeros_like(x))
    plain = build(validated().student, SHAPE, 3, "s")
    assert "input_range" not in [layer.name for layer in plain.layers]


class HighResGraphTeacher(tf.Module):
    """A production-style teacher from elsewhere: a SavedModel at 20x20 px, expecting [0, 255]
    pixels, its classes in its own order (cow, ant, bee), softmax inside the graph."""

    def __init__(self):
        super().__init__()
        kernel = np.zeros((10, 10, 3, 3), np.float32)
        for i, c in enumerate((2, 0, 1)):
            kernel[:, c, :, i] = 1 / 255
        self.kernel = tf.Variable(kernel.reshape(300, 3))

    @tf.function(input_signature=[tf.TensorSpec([None, 20, 20, 3], tf.float32, name="image")])
    def serve(self, image):
        small = tf.nn.avg_pool2d(image, 2, 2, "VALID")
        return {"probs": tf.nn.softmax(tf.nn.relu(tf.reshape(small, (-1, 300)) @ self.kernel - 10.0))}


@pytest.mark.e2e
def test_a_savedmodel_teacher_from_elsewhere_through_dvc_repro(tmp_path, monkeypatch):
    """A user's own data and a SavedModel teacher of another resolution, range and class order:
    `dvc repro` stops at train_teacher naming both settings, then imports it."""
    from conftest import make_repo, sh, write_user_npz

    repo = tmp_path / "repo"
    write_user_npz(repo, per_class=40)
    module = HighResGraphTeacher()
    tf.saved_model.save(module, str(repo / "inputs/graph"), signatures={"serving_default": module.serve})
    make_repo(repo, commit=False,
              data={"name": "npz", "path": "inputs/mine.npz", "val_fraction": 0.2, "test_fraction": 0.2},
              teacher={"source": "file", "path": "inputs/graph", "image_size": [20, 20]})
    sh(["dvc", "add", "inputs/mine.npz", "inputs/graph"], repo)
    sh(["git", "add", "-A"], repo)
    sh(["git", "commit", "-qm", "a teacher from elsewhere"], repo)

    stopped = sh(["dvc", "repro", "train_teacher"], repo, check=False)
    assert stopped.returncode != 0 and "Traceback" not in stopped.stderr
    assert ("train_teacher: error: teacher val accuracy 0.33 with inputs in [0, 1], 1.00 with [0, 255] and its "
            'outputs read in another class order: set teacher.input_range: byte and teacher.classes: '
            '["cow", "ant", "bee"]') in stopped.stdout + stopped.stderr
    assert not (repo / "models/teacher.keras").exists()

    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["teacher"].update(input_range="byte", classes=["cow", "ant", "bee"])  # as the line says
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    done = sh(["dvc", "repro", "train_teacher"], repo)
    log = done.stdout + done.stderr
    assert ("train_teacher: teacher.path = inputs/graph (SavedModel, signature 'serving_default', output 'probs'): "
            "outputs are probabilities") in log
    assert "train_teacher: teacher val accuracy 1.0000 with inputs in [0, 255]" in log

    # The teacher file carries the graph: it loads with safe_mode, and the outputs soft_targets
    # caches from it are the SavedModel's own probabilities, reordered, on the images resized and
    # scaled for it.
    monkeypatch.chdir(repo)
    data = load_prepared(("train", "val"))
    cached = soft_targets.compute(artifacts.load_role("teacher"), data)["val"]
    own = module.serve(tf.image.resize(data.xy("val")[0], (20, 20)) * 255.0)["probs"].numpy()[:, [1, 2, 0]]
    np.testing.assert_allclose(softmax(cached.astype(np.float64), axis=1), own, atol=1e-5)


def test_a_per_channel_mean_std_is_applied_channel_by_channel():
    from kdflow.models.families import build

    imagenet = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    student = build(validated(student={"arch": "repo_student", "input_range": imagenet}).student, (4, 4, 3), 3, "s")
    x = np.random.default_rng(0).uniform(size=(2, 4, 4, 3)).astype(np.float32)
    mapped = keras.Model(student.inputs, student.get_layer("input_range").output)(x).numpy()
    expected = (x - np.array(imagenet["mean"], np.float32)) / np.array(imagenet["std"], np.float32)
    np.testing.assert_allclose(mapped, expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(KdflowError, match="mean/std give 3 values, but the images have 1 channels"):
        build(validated(student={"arch": "repo_student", "input_range": imagenet}).student, SHAPE, 3, "s")


def test_a_teacher_whose_stored_batch_norm_statistics_do_not_fit_the_images_is_named(data, in_tmp):
    """Frozen statistics of other images: with the batch's own statistics it reads every image
    right; with its stored ones, never class q."""
    inputs = keras.Input(SHAPE)
    norm = keras.layers.BatchNormalization(name="scores_bn")
    model = keras.Model(inputs, norm(scores(inputs)))
    norm.set_weights([np.ones(3, np.float32), np.zeros(3, np.float32), np.array([0.0, 6.0, 0.0], np.float32),
                      np.ones(3, np.float32)])
    model.save(in_tmp / "stale.keras")
    printed.clear()
    _, summary = import_teacher(in_tmp / "stale.keras", data)
    assert summary["val_accuracy"] < 0.7
    warnings = [line for line in printed if "warning" in line]
    assert warnings == [f"train_teacher: warning: teacher scores {summary['val_accuracy']:.3f} on validation in "
                        "inference mode but 1.000 with batch statistics: its stored batch-norm statistics do not "
                        "match its weights or these images (docs/troubleshooting.md)"]
    # a healthy teacher with batch norm (statistics of these images) gets no warning
    norm.set_weights([np.ones(3, np.float32), np.zeros(3, np.float32), np.full(3, 5 / 3, np.float32),
                      np.full(3, 50 / 9, np.float32)])
    model.save(in_tmp / "fit.keras")
    printed.clear()
    _, summary = import_teacher(in_tmp / "fit.keras", data)
    assert summary["val_accuracy"] == 1.0 and not [line for line in printed if "warning" in line]


def test_an_accurate_but_flat_teacher_is_stopped_with_what_was_seen(data, in_tmp):
    """A scale-homogeneous teacher (no biases) trained on [0, 255] pixels is as accurate on [0, 1]
    pixels, but its outputs there are near uniform; a temperature baked into a softmax flattens them
    under every input range."""
    def column_sums(scale: float, softmax_temperature: float | None = None) -> keras.Model:
        """Class c's logit: ``scale`` x (column c's sum - column c+1's sum)."""
        inputs = keras.Input(SHAPE)
        dense = keras.layers.Dense(3, use_bias=False, name="scores")
        h = dense(keras.layers.Flatten()(inputs))
        kernel = np.zeros((64, 3), np.float32)
        for c in range(3):
            mask = np.zeros(SHAPE, np.float32)
            mask[:, c], mask[:, (c + 1) % 3] = scale, -scale
            kernel[:, c] = mask.ravel()
        dense.set_weights([kernel])
        if softmax_temperature is not None:
            h = keras.layers.Softmax()(keras.layers.Rescaling(1 / softmax_temperature)(h))
        return keras.Model(inputs, h)

    column_sums(0.05).save(in_tmp / "homogeneous.keras")
    with pytest.raises(KdflowError) as info:
        import_teacher(in_tmp / "homogeneous.keras", data)
    assert re.fullmatch(r"teacher val accuracy 1.00, but its outputs are near uniform: mean top probability 0.[34]\d "
                        r"with inputs in \[0, 1\] \(chance 0.33\), 1.00 with \[0, 255\] at accuracy 1.00: set "
                        r"teacher.input_range: byte \(or teacher.check: false to go on\)", str(info.value)), info.value
    _, summary = import_teacher(in_tmp / "homogeneous.keras", data, input_range="byte")
    assert summary["val_accuracy"] == 1.0
    column_sums(1.0, softmax_temperature=1e4).save(in_tmp / "hot.keras")
    with pytest.raises(KdflowError, match=r"teacher val accuracy 1.00, but its outputs are near uniform: mean top "
                                          r"probability 0.3\d with inputs in \[0, 1\] \(chance 0.33\): check its input "
                                          r"range \(teacher.input_range\) and whether a temperature is baked into"):
        import_teacher(in_tmp / "hot.keras", data)


def test_a_folder_of_teacher_files_is_an_ensemble_of_its_members_in_any_format(data, in_tmp):
    """teacher.path naming a folder of teachers (a .keras file, an .h5 file, a SavedModel): each
    member imported and checked as one teacher is, saved as one model whose logits are the log of
    the members' mean probabilities (or their mean logits); the students' stages refuse to run it."""
    from kdflow.models.layers import ensemble_members, one_teacher
    from kdflow.models.logits import predict_logits
    from kdflow.teacher import ensemble

    folder = in_tmp / "teachers"
    folder.mkdir()
    FORMS["keras, Softmax layer"](folder)
    logits_net().save(folder / "u.h5")
    FORMS["SavedModel from model.export"](folder)
    files = ensemble.member_files(str(folder))
    assert [f.name for f in files] == ["exported", "t.keras", "u.h5"]
    assert ensemble.member_files(str(folder / "exported")) is None  # a SavedModel folder is one teacher
    params = validated(teacher={"source": "file", "path": str(folder), "arch": "repo_teacher"})
    x = data.xy("test")[0]
    single = [teachers.import_file(params.teacher.model_copy(update={"path": str(f)}), params.seed, data,
                                   log=printed.append)[0] for f in files]
    singles = np.stack([predict_logits(m, x) for m in single]).astype(np.float64)
    for average, expected in (("probabilities", np.log(softmax(singles, axis=-1).mean(axis=0))),
                              ("logits", singles.mean(axis=0))):
        model, summary = ensemble.build(len(files), lambda i: teachers.import_file(
            params.teacher.model_copy(update={"path": str(files[i])}), params.seed, data, log=printed.append),
            average, data, log=printed.append)
        assert summary["val_accuracy"] == 1.0 and [m["val_accuracy"] for m in summary["members"]] == [1.0] * 3
        artifacts.save_model(in_tmp / "teacher.keras", model)
        loaded = artifacts.load_model(in_tmp / "teacher.keras", produced_by="train_teacher")  # safe_mode on
        np.testing.assert_allclose(predict_logits(loaded, x), expected, atol=1e-4)
        assert [m.name for m in ensemble_members(loaded)] == ["member_0", "member_1", "member_2"]
    with pytest.raises(KdflowError, match="^views.teacher = online runs the teacher in the students' stage, and "
                                          "it is an ensemble of 3"):
        one_teacher(loaded, "views.teacher = online")
    one_teacher(single[0], "views.teacher = online")  # one teacher: nothing to refuse
    with pytest.raises(KdflowError, match="teacher: members = 2 applies to trained teachers"):
        validated(teacher={"source": "file", "path": str(folder), "members": 2})


def test_trained_members_are_the_teachers_of_seeds_seed_plus_i(data):
    from kdflow.models.logits import predict_logits
    from kdflow.teacher import ensemble, train

    params = validated(teacher={"arch": "spec", "spec": {"conv_filters": [4], "dense_units": [16]}, "members": 2},
                       train_teacher={"epochs": 8, "batch_size": 16, "learning_rate": 0.01, "patience": None,
                                      "augment": {"shift": 0.0}})
    model, summary = ensemble.build(2, lambda i: train.train(params.teacher, params.train_teacher, params.seed + i,
                                                             data), "probabilities", data, log=printed.append)
    x, y = data.xy("test")
    members = [train.train(params.teacher, params.train_teacher, params.seed + i, data)[0] for i in range(2)]
    for i, member in enumerate(members):
        assert np.mean(predict_logits(member, x).argmax(axis=1) == y) > 0.6  # learned (3 classes)
        np.testing.assert_array_equal(predict_logits(member, x), predict_logits(model.get_layer(f"member_{i}"), x))
    assert not np.array_equal(members[0].get_weights()[0], members[1].get_weights()[0])
    assert summary["val_accuracy"] > 0.6
