"""Augmented views: the teacher's cached output is for the very view a student sees, and the
students of one repeat see the same views. The first tests run on every registered view kind."""

import re

import keras
import numpy as np
import pytest

from conftest import make_prepared, section
from kdflow import soft_targets, views
from kdflow.distillation import TEACHER_LOGITS
from kdflow.errors import KdflowError
from kdflow.extensions import validate_all
from kdflow.objective import LABELS
from kdflow.training import make_dataset

# Each registered kind with keys that make its views differ from the images: a new kind adds its line.
KIND_KEYS = {"shift": {"shift": 2}, "crop": {"scale": [0.25, 1.0]}}


def views_cfg(kind: str, **values):
    return section("views", kind=kind, **{**KIND_KEYS[kind], **values})


def test_every_view_kind_is_tested_here():
    assert set(KIND_KEYS) == set(views.VIEW_KINDS.names())


@pytest.mark.parametrize("kind", KIND_KEYS)
def test_the_view_table_is_a_function_of_seed_image_and_view_only(kind):
    cfg = views_cfg(kind, count=4, flip=True)
    small, large = views.table(5, 10, cfg, (8, 8)), views.table(5, 30, cfg, (8, 8))
    np.testing.assert_array_equal(small, large[:10])  # row i does not depend on how many images
    assert small.dtype == np.int32 and small.shape[:2] == (10, 4)
    assert not np.array_equal(small, views.table(6, 10, cfg, (8, 8)))


def identity_teacher(shape):
    """A "teacher" whose outputs are the pixels of the image it is given: its cached outputs are
    the views it saw, exactly (a reshape, no arithmetic), whatever the batch."""
    inputs = keras.Input(shape)
    return keras.Model(inputs, keras.layers.Flatten()(inputs))


@pytest.mark.parametrize("kind", KIND_KEYS)
def test_the_student_sees_the_view_the_teacher_saw_with_its_cached_output(kind):
    data = make_prepared(n_per_class=12, shape=(8, 8, 1))
    train_views = views.for_training(3, len(data.xy("train")[1]), views_cfg(kind, count=4, flip=True), data.input_shape)
    cache = soft_targets.compute(identity_teacher(data.input_shape), data, train_views)
    (x, y), n = data.xy("train"), len(data.xy("train")[1])
    assert cache["train"].shape == (n, 4, 64) and cache["val"].shape == (len(data.xy("val")[1]), 64)
    changed = 0
    for images, batch in make_dataset(x, {LABELS: y, TEACHER_LOGITS: cache["train"]}, 10, seed=3, epochs=range(3),
                                      views=train_views):
        # the output delivered with each sample is the teacher's on exactly the image delivered
        np.testing.assert_array_equal(images.numpy().reshape(len(images), -1), batch[TEACHER_LOGITS].numpy())
        changed += sum(not any(np.array_equal(image, original) for original in x) for image in images.numpy())
    assert changed > n  # over 3 epochs (3n samples), most were augmented views, not the stored images


@pytest.mark.parametrize("kind", KIND_KEYS)
def test_paired_students_see_identical_view_sequences(kind):
    data = make_prepared(n_per_class=12, shape=(8, 8, 1))
    x, y = data.xy("train")
    train_views = views.for_training(3, len(y), views_cfg(kind, count=4), data.input_shape)
    cache = np.zeros((len(y), 4, 3), np.float32)

    def images(seed, with_teacher):
        t = {LABELS: y, TEACHER_LOGITS: cache} if with_teacher else {LABELS: y}
        return [b[0].numpy() for b in make_dataset(x, t, 10, seed=seed, epochs=range(3), views=train_views)]

    scratch, distilled = images(11, False), images(11, True)
    for a, b in zip(scratch, distilled, strict=True):
        np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(a, b) for a, b in zip(scratch, images(12, False)))  # another repeat differs
    # the view of a sample in an epoch is views.choice(seed, epoch)[i]: a pure function
    np.testing.assert_array_equal(views.choice(11, 2, 50, 4).numpy()[:len(y)], views.choice(11, 2, len(y), 4).numpy())


# ---- shift -------------------------------------------------------------------------------------

def test_a_shift_view_is_the_shifted_and_flipped_image_with_zero_fill():
    rng = np.random.default_rng(0)
    x = rng.random((6, 7, 5, 2), dtype=np.float32)
    rows = np.array([[0, 0, 0], [2, -1, 0], [-2, 2, 1], [1, 0, 1], [0, -2, 0], [-1, -1, 1]], np.int32)

    def reference(image, dy, dx, flip):
        image = image[:, ::-1] if flip else image
        padded = np.pad(image, ((2, 2), (2, 2), (0, 0)))
        return padded[2 - dy:2 - dy + 7, 2 - dx:2 - dx + 5]

    out = views.Views(rows[:, None], views_cfg("shift", count=1)).apply(x, rows).numpy()
    for i in range(len(x)):
        np.testing.assert_array_equal(out[i], reference(x[i], *rows[i]))


def test_shift_tables_stay_in_range_and_flip_only_when_asked():
    cfg = views_cfg("shift", count=4, shift=2, flip=True)
    table = views.table(5, 10, cfg, (8, 8))
    assert table.shape == (10, 4, 3) and np.abs(table[..., :2]).max() <= 2 and set(np.unique(table[..., 2])) == {0, 1}
    assert not views.table(5, 10, views_cfg("shift", count=4), (8, 8))[..., 2].any()  # flip off: never flipped
    with pytest.raises(KdflowError, match=r"views.shift = 4: must be less than half the image size \(8x8\)"):
        views.table(5, 10, views_cfg("shift", shift=4), (8, 8))


# ---- crop ---------------------------------------------------------------------------------------

def test_crop_boxes_have_the_asked_area_and_aspect_and_stay_in_the_image():
    cfg = views_cfg("crop", count=8, scale=[0.2, 0.6], ratio=[0.5, 2.0], flip=True)
    table = views.table(1, 200, cfg, (40, 48)).reshape(-1, 5)
    y0, x0, h, w, flip = table.T
    assert (y0 >= 0).all() and (x0 >= 0).all() and (y0 + h <= 40).all() and (x0 + w <= 48).all()
    assert (h >= 1).all() and (w >= 1).all() and set(np.unique(flip)) == {0, 1}
    # rounding to whole pixels moves the area and the aspect a little; clipping to the image only shrinks
    area = h * w / (40 * 48)
    assert 0.2 * 0.85 <= area.min() and area.max() <= 0.6 * 1.15 and area.max() - area.min() > 0.3
    aspect = w / h
    assert 0.5 * 0.85 <= aspect.min() and aspect.max() <= 2.0 * 1.15
    assert not views.table(1, 10, views_cfg("crop", count=4), (8, 8))[..., 4].any()  # flip off: never flipped


def reference_crop(image, y0, x0, h, w, flip):
    """Bilinear resampling of the box to the image size, as TensorFlow documents crop_and_resize:
    output pixel (i, j) samples the input at y0 + i (h - 1) / (H - 1), x0 + j (w - 1) / (W - 1)."""
    height, width = image.shape[:2]
    ys = y0 + np.arange(height) * (h - 1) / (height - 1)
    xs = x0 + np.arange(width) * (w - 1) / (width - 1)
    xs = xs[::-1] if flip else xs

    def lerp(a, positions, axis):
        low = np.floor(positions).astype(int)
        high = np.minimum(low + 1, a.shape[axis] - 1)
        frac = (positions - low).reshape([-1 if d == axis else 1 for d in range(a.ndim)])
        return np.take(a, low, axis) * (1 - frac) + np.take(a, high, axis) * frac

    return lerp(lerp(image.astype(np.float64), ys, 0), xs, 1)


def test_a_crop_view_is_the_box_resized_back_and_mirrored_when_flipped():
    rng = np.random.default_rng(0)
    x = rng.random((4, 9, 7, 2), dtype=np.float32)
    rows = np.array([[0, 0, 9, 7, 0], [2, 1, 5, 4, 0], [3, 2, 6, 5, 1], [4, 6, 1, 1, 1]], np.int32)
    out = views.Views(rows[:, None], views_cfg("crop", count=1)).apply(x, rows).numpy()
    for i in range(len(x)):
        np.testing.assert_allclose(out[i], reference_crop(x[i], *rows[i]), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(out[0], x[0])  # the whole image, unflipped: the image itself


@pytest.mark.parametrize("keys, message", [
    ({"scale": [0.5, 0.2]}, "views: scale = [0.5, 0.2]: must be [min, max] with 0 < min <= max <= 1"),
    ({"scale": [0.1, 1.5]}, "views: scale = [0.1, 1.5]"),
    ({"ratio": [0.0, 1.0]}, "views: ratio = [0.0, 1.0]: must be [min, max] with 0 < min <= max"),
    ({"scale": [1.0, 1.0], "ratio": [1.0, 1.0]}, "every view would be the same crop"),
])
def test_bad_crop_keys_are_one_line(keys, message):
    with pytest.raises(KdflowError, match=re.escape(message)):
        validate_all({"views": {"kind": "crop", **keys}})


# ---- the cache ------------------------------------------------------------------------------------

def exact_teacher(shape, classes):
    """A linear teacher with small integer weights: on 0/1 images its logits are exact integers."""
    inputs = keras.Input(shape)
    model = keras.Model(inputs, keras.layers.Dense(classes)(keras.layers.Flatten()(inputs)))
    rng = np.random.default_rng(1)
    model.set_weights([rng.integers(-3, 4, size=w.shape).astype(np.float32) for w in model.get_weights()])
    return model


def binary_data():
    data = make_prepared(n_per_class=12, shape=(8, 8, 1))
    for key in ("x_train", "x_val"):
        data.arrays[key] = (data.arrays[key] > 0.5).astype(np.float32)
    return data


def drawn(data, **values):
    return views.for_training(7, len(data.xy("train")[1]), section("views", **values), data.input_shape)


def test_a_cache_of_other_views_is_refused(tmp_path):
    data = binary_data()
    teacher = exact_teacher(data.input_shape, data.num_classes)
    cached = drawn(data, count=4, shift=1)
    path = tmp_path / "soft_targets"
    soft_targets.save(soft_targets.compute(teacher, data, cached), data, path)
    assert soft_targets.load(data, cached, path=path)["train"].shape[1] == 4
    for other in ({"count": 4, "shift": 2}, {"count": 3, "shift": 1}):
        with pytest.raises(KdflowError, match="computed for other views .*rerun `dvc repro soft_targets`"):
            soft_targets.load(data, drawn(data, **other), path=path)
    with pytest.raises(KdflowError, match=r"train logits have shape \(\d+, 4, 3\), expected \(\d+, 3\)"):
        soft_targets.load(data, None, path=path)  # views.count: 0 with a cache of views


def test_a_top_k_cache_keeps_the_top_probabilities_and_spreads_the_rest(tmp_path):
    from scipy.special import softmax

    from kdflow.soft_targets import TOP_K_KEYS, full_logits, top_k_form

    logits = (np.random.default_rng(2).normal(size=(5, 3, 10)) * 3).astype(np.float32)
    form = top_k_form(logits, 3)
    p = softmax(logits.astype(np.float64), axis=-1)
    q = softmax(full_logits(*(form[k] for k in TOP_K_KEYS), 10), axis=-1)
    top = np.argsort(-logits, axis=-1)[..., :3]
    np.testing.assert_allclose(np.take_along_axis(q, top, -1), np.take_along_axis(p, top, -1), rtol=1e-5)
    rest = q.copy()
    np.put_along_axis(rest, top, np.nan, axis=-1)
    rest = rest[~np.isnan(rest)].reshape(5, 3, 7)
    np.testing.assert_allclose(rest, rest[..., :1].repeat(7, -1), rtol=1e-5)  # spread evenly
    np.testing.assert_allclose(rest.sum(-1), 1 - np.take_along_axis(p, top, -1).sum(-1), rtol=1e-4)

    # through the stage's compute / save / load: stored as the top k, read back as full logits
    data = binary_data()
    cached = drawn(data, count=4, shift=1, top_k=2)
    teacher = exact_teacher(data.input_shape, data.num_classes)
    cache = soft_targets.compute(teacher, data, cached, top_k=2)
    assert "train" not in cache and cache["train_top_values"].shape[-1] == 2
    soft_targets.save(cache, data, tmp_path / "soft_targets")
    loaded = soft_targets.load(data, cached, path=tmp_path / "soft_targets")["train"]
    full = soft_targets.compute(teacher, data, cached)["train"]
    assert loaded.shape == full.shape
    np.testing.assert_array_equal(np.asarray(loaded).argmax(-1), full.argmax(-1))
    # read by rows, as the student's batches ask: the rows asked for, expanded
    rows = np.array([3, 0, 3])
    np.testing.assert_array_equal(loaded.take(rows), np.asarray(loaded)[rows])
