"""Bring your own data: npz files and image folders built on the fly, the ResNet family, the
teacher's augmentation, and every rejection message (a user's teacher: tests/test_teachers.py)."""

import keras
import numpy as np
import pytest
from PIL import Image

from conftest import section
from kdflow.core import KdflowError
from kdflow.core.prepared import load_prepared
from kdflow.data.sources import load
from kdflow.data.split import prepare


def DataParams(**values):  # noqa: N802 - the `data` section, as prepare validates it
    return section("data", **values)


def digits_like(n_per_class=6, labels=("cat", "dog", "eel"), shape=(8, 8), seed=0):
    """uint8 images whose bright column depends on the class, with the given labels."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.asarray(labels), n_per_class)
    x = rng.integers(0, 60, size=(len(y), *shape), dtype=np.uint8)
    for i, label in enumerate(y):
        x[i, :, list(labels).index(label)] = 255
    return x, y


def npz_params(path, **extra):
    return DataParams(name="npz", path=str(path), val_fraction=0.2, test_fraction=0.2, **extra)


def test_npz_with_string_labels_and_odd_class_count(in_tmp):
    x, y = digits_like(labels=("eel", "cat", "dog"))
    np.savez(in_tmp / "mine.npz", x_train=x, y_train=y)
    meta = prepare(npz_params(in_tmp / "mine.npz"), seed=1)
    assert meta["num_classes"] == 3 and meta["class_names"] == ["cat", "dog", "eel"]
    assert meta["input_shape"] == [8, 8, 1] and sum(meta["sizes"].values()) == 18
    data = load_prepared()
    for split in ("train", "val", "test"):
        xs, ys = data.xy(split)
        xs = xs[:]  # read from the shards
        assert xs.dtype == np.float32 and 0 <= xs.min() and xs.max() <= 1
        assert sorted(set(ys.tolist())) == [0, 1, 2]  # stratified: every class in every split
    # class id i is class_names[i]: the bright column tells the original label
    xs, ys = data.xy("train")
    xs = xs[:]
    assert all(xs[i, 0, ["eel", "cat", "dog"].index(data.class_names[ys[i]]), 0] == 1.0 for i in range(len(ys)))


def test_npz_own_test_split_is_kept_and_integer_labels_are_remapped(in_tmp):
    x, y = digits_like(labels=(3, 7, 11, 40, 41), shape=(6, 6))
    xt, yt = digits_like(n_per_class=2, labels=(3, 7, 11, 40, 41), shape=(6, 6), seed=1)
    np.savez(in_tmp / "d.npz", x_train=np.stack([x] * 3, -1), y_train=y, x_test=np.stack([xt] * 3, -1), y_test=yt)
    meta = prepare(npz_params(in_tmp / "d.npz"), seed=1)
    assert meta["class_names"] == ["3", "7", "11", "40", "41"] and meta["sizes"]["test"] == 10
    assert meta["input_shape"] == [6, 6, 3]


def write_image_dir(root, classes=("a", "b", "c"), n=5, size=(10, 12), mode="RGB"):
    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(n):
            pixels = rng.integers(0, 255, size=(*size, 3), dtype=np.uint8)
            Image.fromarray(pixels).convert(mode).save(root / c / f"{i}.png")


def test_image_dir_is_resized_and_labelled_by_folder(in_tmp):
    write_image_dir(in_tmp / "imgs")
    cfg = DataParams(name="image_dir", path=str(in_tmp / "imgs"), image_size=[8, 8],
                     val_fraction=0.2, test_fraction=0.2)
    meta = prepare(cfg, seed=0)
    assert meta["input_shape"] == [8, 8, 3] and meta["class_names"] == ["a", "b", "c"]
    gray = DataParams(name="image_dir", path=str(in_tmp / "imgs"), image_size=[8, 8], color_mode="grayscale",
                      val_fraction=0.2, test_fraction=0.2)
    assert load(gray).x.shape == (15, 8, 8, 1)


def test_an_image_folder_streams_through_prepare_a_block_at_a_time(in_tmp, monkeypatch):
    """The folder is decoded IMAGE_BLOCK images at a time into scratch shards and split from
    there: NumPy never holds the images whole (tracemalloc traces its allocations). Images
    already at image_size are 8-bit after the (identity) resize: stored as uint8."""
    import tracemalloc

    from kdflow.data import sources
    from kdflow.data import split as splits

    monkeypatch.setattr(sources, "IMAGE_BLOCK", 32)
    monkeypatch.setattr(splits, "BLOCK_BYTES", 2**16)
    write_image_dir(in_tmp / "imgs", n=200, size=(24, 24))  # 600 images, 4 MiB as float32
    cfg = DataParams(name="image_dir", path=str(in_tmp / "imgs"), image_size=[24, 24])
    whole = 600 * 24 * 24 * 3 * 4
    tracemalloc.start()
    try:
        prepare(cfg, seed=0)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 0.4 * whole, peak  # the train split alone is 0.7 of it
    assert np.load(in_tmp / "data/prepared/train/x-00000.npy").dtype == np.uint8
    # the same images as reading the folder in one go, in the same order
    import keras

    reference = keras.utils.image_dataset_from_directory(in_tmp / "imgs", image_size=(24, 24), shuffle=False,
                                                         batch_size=None, verbose=False)
    everything = np.stack([image for image, _ in reference.as_numpy_iterator()]) / 255.0
    np.testing.assert_array_equal(load(cfg).x[:], everything)


def bad_npz(tmp, **arrays):
    np.savez(tmp / "bad.npz", **arrays)
    return tmp / "bad.npz"


@pytest.mark.parametrize("make, message", [
    (lambda t: bad_npz(t, x_train=np.zeros((4, 5, 5))), "missing array(s) y_train"),
    (lambda t: bad_npz(t, x_train=np.zeros((4, 5, 5)), y_train=np.array([0, 1, 0])),
     "x_train has 4 samples but y_train has shape (3,)"),
    (lambda t: bad_npz(t, x_train=np.zeros((5, 5, 5)), y_train=np.array([0, 0, 1, 1, 2])),
     "class(es) with fewer than 2 samples: 2 (1)"),
    (lambda t: bad_npz(t, x_train=np.zeros((4, 5, 5)), y_train=np.array([1, 1, 1, 1])),
     "only one class (np.int64(1)) in the labels"),
    (lambda t: bad_npz(t, x_train=np.full((4, 5, 5), np.nan), y_train=np.array([0, 0, 1, 1])),
     "x_train contains NaN or infinite values"),
    (lambda t: bad_npz(t, x_train=np.zeros((4, 25)), y_train=np.array([0, 0, 1, 1])),
     "x_train has shape (4, 25): expected images (N, H, W) or (N, H, W, C)"),
    (lambda t: bad_npz(t, x_train=np.array([{"a": 1}] * 4, dtype=object), y_train=np.array([0, 0, 1, 1])),
     "holds pickled Python objects, refused"),
    (lambda t: bad_npz(t, x_train=np.zeros((4, 5, 5)), y_train=np.array([0, 0, 1, 1]), x_test=np.zeros((2, 5, 5))),
     "has only one of x_test / y_test"),
    (lambda t: t / "absent.npz", "file not found"),
])
def test_npz_rejections(in_tmp, make, message):
    path = make(in_tmp)
    with pytest.raises(KdflowError) as info:
        prepare(npz_params(path), seed=0)
    assert message in str(info.value) and f"data.path = {path}" in str(info.value)
    assert not (in_tmp / "data").exists()  # nothing written


def test_truncated_npz_is_rejected(in_tmp):
    x, y = digits_like()
    np.savez(in_tmp / "t.npz", x_train=x, y_train=y)
    raw = (in_tmp / "t.npz").read_bytes()
    (in_tmp / "t.npz").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(KdflowError, match="not a readable .npz, truncated or corrupt"):
        prepare(npz_params(in_tmp / "t.npz"), seed=0)


def test_image_dir_rejections(in_tmp):
    cfg = lambda p: DataParams(name="image_dir", path=str(p), image_size=[8, 8])  # noqa: E731
    (in_tmp / "empty").mkdir()
    with pytest.raises(KdflowError, match="needs one sub-folder per class, at least 2"):
        load(cfg(in_tmp / "empty"))
    write_image_dir(in_tmp / "imgs")
    (in_tmp / "imgs" / "d").mkdir()
    with pytest.raises(KdflowError, match="class folder 'd' holds no images"):
        load(cfg(in_tmp / "imgs"))
    (in_tmp / "imgs" / "d" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    for i in range(2):
        Image.new("RGB", (10, 12)).save(in_tmp / "imgs" / "d" / f"ok{i}.png")
    with pytest.raises(KdflowError, match=r"broken.png is not a readable image"):
        load(cfg(in_tmp / "imgs"))


def test_file_sources_need_a_path():
    with pytest.raises(Exception, match="name 'npz' reads data.path"):
        DataParams(name="npz")
    with pytest.raises(Exception, match="name 'image_dir' reads data.path: set it to your image folder"):
        DataParams(name="image_dir")


def user_teacher(input_shape, classes):
    inputs = keras.Input(input_shape)
    outputs = keras.layers.Dense(classes, activation="softmax", name="probs")(keras.layers.Flatten()(inputs))
    return keras.Model(inputs, outputs)


def test_resnet_family_gives_a_teacher_ten_times_the_student():
    from kdflow.models.families import build

    teacher = build(section("student", arch="resnet20_w2"), (32, 32, 3), 10, "t")
    student = build(section("student", arch="notebook_student"), (32, 32, 3), 10, "s")
    assert teacher.count_params() >= 10 * student.count_params()
    custom = build(section("student", arch="resnet", resnet={"base_filters": 4, "blocks_per_stage": [1, 2],
                                                            "width": 0.5}), (16, 16, 1), 5, "r")
    assert custom.output_shape == (None, 5) and custom.get_layer("stage1_block0_proj") is not None


def test_augmentation_is_seeded_and_left_out_of_the_saved_model(in_tmp):
    from kdflow.core.params import AugmentParams
    from kdflow.teacher.train import with_augmentation

    base = user_teacher((8, 8, 1), 3)
    augmented = with_augmentation(base, AugmentParams(shift=0.25, crop=2), seed=3)
    x = np.random.default_rng(0).uniform(size=(4, 8, 8, 1)).astype(np.float32)
    assert np.allclose(augmented(x, training=False), base(x))  # identity outside training
    keras.utils.set_random_seed(0)
    first = augmented.layers[1](x, training=True)
    assert not np.allclose(first, x)
    assert with_augmentation(base, AugmentParams(shift=0.0), seed=3) is base
