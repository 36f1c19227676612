"""Augmented views: the teacher's cached output is for the very view a student sees, and the
students of one repeat see the same table. The first tests run on every registered view kind."""

import re

import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import distilled_students, logit_targets, make_prepared, section, validated
from kdflow.core import KdflowError
from kdflow.schema import Schema
from kdflow.training.inputs import make_dataset
from kdflow.training.objective import LABEL_WEIGHT, LABELS, PARTNER_LABELS, label_ce
from kdflow.views import cache, table
from kdflow.views.cache import TEACHER_LOGITS
from kdflow.views.kinds import VIEW_KINDS
from kdflow.views.mixes import MIXES

# Each registered kind with keys that make its views differ from the images: a new kind adds its line.
KIND_KEYS = {"shift": {"shift": 2}, "crop": {"scale": [0.25, 1.0]}}


def views_cfg(kind: str, **values):
    return section("views", kind=kind, **{**KIND_KEYS[kind], **values})


def test_every_view_kind_is_tested_here():
    assert set(KIND_KEYS) == set(VIEW_KINDS)


@pytest.mark.parametrize("kind", KIND_KEYS)
def test_the_view_table_is_a_function_of_seed_image_and_view_only(kind):
    cfg = views_cfg(kind, count=4, flip=True)
    small, large = table.table(5, 10, cfg, (8, 8)), table.table(5, 30, cfg, (8, 8))
    np.testing.assert_array_equal(small, large[:10])  # row i does not depend on how many images
    assert small.dtype == np.int32 and small.shape[:2] == (10, 4)
    assert not np.array_equal(small, table.table(6, 10, cfg, (8, 8)))


def identity_teacher(shape):
    """A "teacher" whose outputs are the pixels of the image it is given: its cached outputs are
    the views it saw, exactly (a reshape, no arithmetic), whatever the batch."""
    inputs = keras.Input(shape)
    return keras.Model(inputs, keras.layers.Flatten()(inputs))


# every kind unmixed, and every mix once (on one kind each)
KIND_MIXES = [(kind, "none") for kind in KIND_KEYS] + [("shift", "mixup"), ("crop", "cutmix")]


def test_every_mix_is_tested_here():
    assert {mix for _, mix in KIND_MIXES} == set(MIXES)


@pytest.mark.parametrize("kind, mix", KIND_MIXES)
def test_the_student_sees_the_view_the_teacher_saw_with_its_cached_output(kind, mix):
    data = make_prepared(n_per_class=12, shape=(8, 8, 1))
    cfg = views_cfg(kind, count=4, flip=True, mix=mix)
    train_views = table.for_training(3, len(data.xy("train")[1]), cfg, data.input_shape)
    computed = cache.compute(identity_teacher(data.input_shape), data, train_views)
    (x, y), n = data.xy("train"), len(data.xy("train")[1])
    assert computed["train"].shape == (n, 4, 64) and computed["val"].shape == (len(data.xy("val")[1]), 64)
    changed = 0
    for images, batch in make_dataset(x, {LABELS: y, TEACHER_LOGITS: computed["train"]}, 10, seed=3, epochs=range(3),
                                      views=train_views):
        # the output delivered with each sample is the teacher's on exactly the image delivered
        np.testing.assert_array_equal(images.numpy().reshape(len(images), -1), batch[TEACHER_LOGITS].numpy())
        changed += sum(not any(np.array_equal(image, original) for original in x) for image in images.numpy())
    assert changed > n  # over 3 epochs (3n samples), most were augmented views, not the stored images


@pytest.mark.parametrize("kind", KIND_KEYS)
def test_paired_students_see_identical_view_sequences(kind):
    data = make_prepared(n_per_class=12, shape=(8, 8, 1))
    x, y = data.xy("train")
    train_views = table.for_training(3, len(y), views_cfg(kind, count=4), data.input_shape)
    logits = np.zeros((len(y), 4, 3), np.float32)

    def images(seed, with_teacher):
        t = {LABELS: y, TEACHER_LOGITS: logits} if with_teacher else {LABELS: y}
        return [b[0].numpy() for b in make_dataset(x, t, 10, seed=seed, epochs=range(3), views=train_views)]

    scratch, distilled = images(11, False), images(11, True)
    for a, b in zip(scratch, distilled, strict=True):
        np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(a, b) for a, b in zip(scratch, images(12, False)))  # another repeat differs
    # the view of a sample in an epoch is table.choice(seed, epoch)[i]: a pure function
    np.testing.assert_array_equal(table.choice(11, 2, 50, 4).numpy()[:len(y)], table.choice(11, 2, len(y), 4).numpy())


# ---- mixes -------------------------------------------------------------------------------------

@pytest.mark.parametrize("mix", ["mixup", "cutmix"])
def test_a_mixed_view_is_two_views_mixed_and_its_label_the_mixed_label(mix):
    data = make_prepared(n_per_class=12, shape=(8, 8, 1))
    (x, y), n = data.xy("train"), len(data.xy("train")[1])
    train_views = table.for_training(3, n, views_cfg("shift", count=4, mix=mix), data.input_shape)
    rows_table = train_views.table
    partner = rows_table[..., -MIXES[mix].columns]
    assert rows_table.shape[:2] == (n, 4) and (partner != np.arange(n)[:, None]).all() and partner.max() < n
    assert len(np.unique(partner)) > n // 2  # partners spread over the whole split
    # the table is a pure function of the seed: drawn again, the same
    np.testing.assert_array_equal(rows_table, table.for_training(3, n, train_views.params, data.input_shape).table)
    plain = table.Views(rows_table[..., :3], views_cfg("shift", count=4))  # the same geometry, unmixed
    rows, view = rows_table[:, 1], 1
    mates = partner[:, view]
    own, other = plain.apply(x, rows[:, :3]).numpy(), plain.apply(x[mates], rows_table[mates, view, :3]).numpy()
    mixed = train_views.apply(x, rows, x[mates], rows_table[mates, view]).numpy()
    weight = train_views.label_weight(rows, data.input_shape).numpy()
    if mix == "mixup":
        assert (weight >= 0.5).all() and (weight <= 1).all() and weight.std() > 0.05  # max(b, 1 - b), b ~ U(0, 1)
        w = weight[:, None, None, None]
        np.testing.assert_allclose(mixed, w * own + (1 - w) * other, rtol=1e-6, atol=1e-7)
    else:
        y0, x0, h, w = (rows[:, -4 + i] for i in range(4))
        for i in range(n):  # the partner's pixels inside the box, the image's outside
            inside = np.zeros((8, 8, 1), bool)
            inside[y0[i]:y0[i] + h[i], x0[i]:x0[i] + w[i]] = True
            np.testing.assert_array_equal(mixed[i], np.where(inside, other[i], own[i]))
            assert weight[i] == pytest.approx(1 - inside.mean())
        assert (h * w > 0).any() and (weight < 1).mean() > 0.5
    # the students' batches carry the partner's label and the image's share of the mixed label
    for images, batch in make_dataset(x, {LABELS: y}, 16, seed=5, epochs=range(1), views=train_views):
        assert set(batch) == {LABELS, PARTNER_LABELS, LABEL_WEIGHT}
        assert (batch[LABEL_WEIGHT].numpy() <= 1).all()
        break
    chosen = table.choice(5, 0, n, 4).numpy()
    seed = tf.constant([5, 0], tf.int64)  # make_dataset's order of epoch 0 for seed 5
    order = tf.random.experimental.stateless_shuffle(tf.range(n), seed=seed).numpy()[:16]
    np.testing.assert_array_equal(batch[PARTNER_LABELS].numpy(), y[partner[order, chosen[order]]])


def test_the_mixed_label_loss_is_the_cross_entropy_with_the_mixed_one_hot():
    logits = tf.constant(np.random.default_rng(0).normal(size=(6, 3)), tf.float32)
    labels, partners = tf.constant([0, 1, 2, 0, 1, 2]), tf.constant([1, 1, 0, 2, 0, 0])
    weight = tf.constant([1.0, 0.5, 0.75, 0.6, 0.9, 0.55])
    mixed = weight[:, None] * tf.one_hot(labels, 3) + (1 - weight[:, None]) * tf.one_hot(partners, 3)
    expected = tf.nn.softmax_cross_entropy_with_logits(labels=mixed, logits=logits)
    got = label_ce({LABELS: labels, PARTNER_LABELS: partners, LABEL_WEIGHT: weight}, logits)
    np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=1e-6)


@pytest.mark.parametrize("keys, message", [
    ({"mix": "blend"}, "views.mix = 'blend'"),
    ({"mix": "mixup", "mix_alpha": 0}, "views.mix_alpha = 0"),
    ({"teacher": "live"}, "views.teacher = 'live'"),
    ({"cache_dtype": "int8"}, "views.cache_dtype = 'int8'"),
])
def test_bad_mix_keys_are_one_line(keys, message):
    with pytest.raises(KdflowError, match=re.escape(message)):
        Schema.checked({"views": keys})


def test_a_mix_makes_views_of_an_unshifted_image():
    assert section("views", shift=0, mix="mixup").mix == "mixup"  # not refused as "every view is the image"
    with pytest.raises(KdflowError, match="every view would be the image itself"):
        Schema.checked({"views": {"shift": 0}})


# ---- shift -------------------------------------------------------------------------------------

def test_a_shift_view_is_the_shifted_and_flipped_image_with_zero_fill():
    rng = np.random.default_rng(0)
    x = rng.random((6, 7, 5, 2), dtype=np.float32)
    rows = np.array([[0, 0, 0], [2, -1, 0], [-2, 2, 1], [1, 0, 1], [0, -2, 0], [-1, -1, 1]], np.int32)

    def reference(image, dy, dx, flip):
        image = image[:, ::-1] if flip else image
        padded = np.pad(image, ((2, 2), (2, 2), (0, 0)))
        return padded[2 - dy:2 - dy + 7, 2 - dx:2 - dx + 5]

    out = table.Views(rows[:, None], views_cfg("shift", count=1)).apply(x, rows).numpy()
    for i in range(len(x)):
        np.testing.assert_array_equal(out[i], reference(x[i], *rows[i]))


def test_shift_tables_stay_in_range_and_flip_only_when_asked():
    cfg = views_cfg("shift", count=4, shift=2, flip=True)
    shifts = table.table(5, 10, cfg, (8, 8))
    assert shifts.shape == (10, 4, 3) and np.abs(shifts[..., :2]).max() <= 2 and set(np.unique(shifts[..., 2])) == {0, 1}
    assert not table.table(5, 10, views_cfg("shift", count=4), (8, 8))[..., 2].any()  # flip off: never flipped
    with pytest.raises(KdflowError, match=r"views.shift = 4: must be less than half the image size \(8x8\)"):
        table.table(5, 10, views_cfg("shift", shift=4), (8, 8))


# ---- crop ---------------------------------------------------------------------------------------

def test_crop_boxes_have_the_asked_area_and_aspect_and_stay_in_the_image():
    cfg = views_cfg("crop", count=8, scale=[0.2, 0.6], ratio=[0.5, 2.0], flip=True)
    boxes = table.table(1, 200, cfg, (40, 48)).reshape(-1, 5)
    y0, x0, h, w, flip = boxes.T
    assert (y0 >= 0).all() and (x0 >= 0).all() and (y0 + h <= 40).all() and (x0 + w <= 48).all()
    assert (h >= 1).all() and (w >= 1).all() and set(np.unique(flip)) == {0, 1}
    # rounding to whole pixels moves the area and the aspect a little; clipping to the image only shrinks
    area = h * w / (40 * 48)
    assert 0.2 * 0.85 <= area.min() and area.max() <= 0.6 * 1.15 and area.max() - area.min() > 0.3
    aspect = w / h
    assert 0.5 * 0.85 <= aspect.min() and aspect.max() <= 2.0 * 1.15
    assert not table.table(1, 10, views_cfg("crop", count=4), (8, 8))[..., 4].any()  # flip off: never flipped


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
    out = table.Views(rows[:, None], views_cfg("crop", count=1)).apply(x, rows).numpy()
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
        Schema.checked({"views": {"kind": "crop", **keys}})


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
    return table.for_training(7, len(data.xy("train")[1]), section("views", **values), data.input_shape)


def test_a_cache_of_other_views_is_refused(tmp_path):
    data = binary_data()
    teacher = exact_teacher(data.input_shape, data.num_classes)
    cached = drawn(data, count=4, shift=1)
    path = tmp_path / "soft_targets"
    cache.save(cache.compute(teacher, data, cached), data, path)
    assert cache.load(data, cached, path=path)["train"][TEACHER_LOGITS].shape[1] == 4
    for other in ({"count": 4, "shift": 2}, {"count": 3, "shift": 1}):
        with pytest.raises(KdflowError, match="computed for other views .*rerun `dvc repro soft_targets`"):
            cache.load(data, drawn(data, **other), path=path)
    with pytest.raises(KdflowError, match=r"train logits have shape \(\d+, 4, 3\), expected \(\d+, 3\)"):
        cache.load(data, None, path=path)  # views.count: 0 with a cache of views


def test_a_top_k_cache_keeps_the_top_probabilities_and_spreads_the_rest(tmp_path):
    from scipy.special import softmax

    from kdflow.views.cache import TOP_K_KEYS, full_logits, top_k_form

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
    stored = cache.compute(teacher, data, cached, top_k=2)
    assert "train" not in stored and stored["train_top_values"].shape[-1] == 2
    cache.save(stored, data, tmp_path / "soft_targets")
    loaded = cache.load(data, cached, path=tmp_path / "soft_targets")["train"][TEACHER_LOGITS]
    full = cache.compute(teacher, data, cached)["train"]
    assert loaded.shape == full.shape
    np.testing.assert_array_equal(np.asarray(loaded).argmax(-1), full.argmax(-1))
    # read by rows, as the student's batches ask: the rows asked for, expanded
    rows = np.array([3, 0, 3])
    np.testing.assert_array_equal(loaded.take(rows), np.asarray(loaded)[rows])


def test_a_float16_cache_is_half_the_size_and_reads_back_as_float32(tmp_path):
    data = binary_data()
    cached = drawn(data, count=4, shift=1)
    teacher = exact_teacher(data.input_shape, data.num_classes)
    full = cache.compute(teacher, data, cached)
    for dtype in ("float32", "float16"):
        cache.save(cache.compute(teacher, data, cached, dtype=dtype), data, tmp_path / dtype)
    sizes = {dtype: sum(f.stat().st_size for f in (tmp_path / dtype).glob("train-*.npy"))
             for dtype in ("float32", "float16")}
    assert sizes["float16"] < 0.55 * sizes["float32"]
    loaded = cache.load(data, cached, path=tmp_path / "float16")["train"][TEACHER_LOGITS]
    assert loaded.dtype == np.float32 and loaded.take(np.array([2, 0])).dtype == np.float32
    np.testing.assert_array_equal(loaded[:], full["train"].astype(np.float16).astype(np.float32))
    np.testing.assert_allclose(loaded[:], full["train"], rtol=1e-3)  # half precision: 3 significant digits


def test_the_online_teacher_gives_the_teacher_outputs_on_the_batch_and_reruns_bit_identically(tmp_path):
    from kdflow.distill import methods, objective

    data = make_prepared(n_per_class=8, shape=(8, 8, 1))
    n = len(data.xy("train")[1])
    params = validated(repeats=1, views={"count": 1, "shift": 1, "mix": "mixup", "teacher": "online"})
    fresh = table.for_training(params.seed, n, params.views, data.input_shape, params.train_student.epochs)
    assert isinstance(fresh, table.EpochViews) and fresh.count == params.train_student.epochs == 2
    assert not np.array_equal(fresh.table[:, 0], fresh.table[:, 1])  # a fresh view in each epoch
    teacher = exact_teacher(data.input_shape, data.num_classes)
    goal = objective.objective(methods.build(params.distill, 4.0), 0.5, teacher=teacher)
    x = tf.constant(data.xy("val")[0][:5])
    online = goal.targets(x, {LABELS: tf.constant([0, 1, 2, 0, 1])})
    np.testing.assert_array_equal(online[TEACHER_LOGITS].numpy(), teacher(x, training=False).numpy())
    cached = {TEACHER_LOGITS: tf.zeros((5, 3))}  # validation's outputs stay the cached ones
    assert goal.targets(x, cached) is cached
    cache.save(cache.compute(teacher, data), data, tmp_path)  # the images as they are (soft_targets without views)
    targets = cache.students_targets(data, fresh, online=True, teacher=teacher, path=tmp_path)
    assert targets["train"] == {} and targets["val"][TEACHER_LOGITS].shape == (len(data.xy("val")[1]), 3)

    def weights():
        return [w for model, _ in distilled_students(params, data, targets, views=fresh, teacher=teacher)
                for w in model.get_weights()]

    first = weights()
    for a, b in zip(first, weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    fitnet = methods.build(section("distill", method="fitnet"), 4.0)
    with pytest.raises(KdflowError, match="views.teacher = online: a feature method needs the teacher's features"):
        cache.students_targets(data, fresh, online=True, teacher=teacher, features=fitnet.features, path=tmp_path)
