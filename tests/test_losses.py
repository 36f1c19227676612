"""The loss terms against NumPy transcriptions of their papers, and the training objective
(TrainingModel.compute_loss) against the published mix of its terms."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import validated
from kdflow.distill import methods, objective
from kdflow.distill.methods import METHODS, Seen, soft_kl
from kdflow.training.objective import HARD_LABELS, LABELS, Objective, hard_ce, training_model
from kdflow.views.cache import TEACHER_LOGITS, feature_target


def np_log_softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def np_kd_loss(labels, teacher, student, alpha, temperature):
    """Hinton et al. 2015, written out independently in NumPy (float64)."""
    ce = -np_log_softmax(student)[np.arange(len(labels)), labels]
    p_t = np.exp(np_log_softmax(teacher / temperature))
    kl = (p_t * (np.log(p_t) - np_log_softmax(student / temperature))).sum(axis=1)
    return alpha * ce + (1 - alpha) * temperature**2 * kl


@pytest.fixture
def batch():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, size=16)
    teacher = rng.normal(0, 3, size=(16, 5))
    student = rng.normal(0, 3, size=(16, 5))
    return labels, teacher, student


def test_t_squared_factor_is_applied(batch):
    labels, teacher, student = batch
    t, s = tf.constant(teacher, tf.float32), tf.constant(student, tf.float32)
    for temperature in (2.0, 8.0):
        p_t = np.exp(np_log_softmax(teacher / temperature))
        bare_kl = (p_t * (np.log(p_t) - np_log_softmax(student / temperature))).sum(axis=1)
        np.testing.assert_allclose(soft_kl(t, s, temperature), temperature**2 * bare_kl, rtol=1e-4)


def test_soft_term_is_non_negative_and_zero_at_the_teacher(batch):
    _, teacher, student = batch
    t = tf.constant(teacher, tf.float32)
    assert np.all(soft_kl(t, tf.constant(student, tf.float32), 3.0).numpy() >= -1e-6)
    np.testing.assert_allclose(soft_kl(t, t, 3.0), 0.0, atol=1e-5)


# ---- the other distillation methods, each against a NumPy transcription of its paper ----

def np_softmax(z):
    return np.exp(np_log_softmax(z))


def np_dkd(labels, teacher, student, T, a, b):
    """Zhao et al. 2022, eqs. (1)-(4): KL of the binary target/non-target distributions
    (TCKD) and KL of the renormalised non-target distributions (NCKD), both x T^2."""
    p_t, p_s = np_softmax(teacher / T), np_softmax(student / T)
    out = []
    for i, c in enumerate(labels):
        bt = np.array([p_t[i, c], 1 - p_t[i, c]])
        bs = np.array([p_s[i, c], 1 - p_s[i, c]])
        tckd = np.sum(bt * np.log(bt / bs))
        keep = np.arange(p_t.shape[1]) != c
        qt = p_t[i, keep] / p_t[i, keep].sum()
        qs = p_s[i, keep] / p_s[i, keep].sum()
        nckd = np.sum(qt * np.log(qt / qs))
        out.append((a * tckd + b * nckd) * T**2)
    return np.array(out)


def np_lskd(teacher, student, T):
    z = lambda v: (v - v.mean(1, keepdims=True)) / (v.std(1, keepdims=True) + 1e-7)  # noqa: E731
    p_t = np_softmax(z(teacher) / T)
    return T**2 * (p_t * (np.log(p_t) - np_log_softmax(z(student) / T))).sum(1)


def np_dist(teacher, student, T, beta, gamma):
    """Huang et al. 2022: 1 - Pearson per sample (inter) and per class over the batch (intra)."""
    ys, yt = np_softmax(student / T), np_softmax(teacher / T)
    inter = np.array([1 - np.corrcoef(ys[i], yt[i])[0, 1] for i in range(len(ys))])
    intra = 1 - np.mean([np.corrcoef(ys[:, j], yt[:, j])[0, 1] for j in range(ys.shape[1])])
    return T**2 * (beta * inter + gamma * intra)


def soft_term(method: str, temperature: float, labels, teacher, student, **knobs) -> np.ndarray:
    """The soft term of ``method`` (built from its knobs) on one batch."""
    section = validated(distill={"method": method, **({method: knobs} if knobs else {})}).distill
    seen = Seen(tf.constant(labels, tf.int32), tf.constant(teacher, tf.float32), tf.constant(student, tf.float32))
    return methods.build(section, temperature).terms(seen)["soft_loss"].numpy()


@pytest.mark.parametrize("T, a, b", [(4.0, 1.0, 8.0), (1.0, 0.5, 2.0)])
def test_dkd_matches_numpy_reference(batch, T, a, b):
    got = soft_term("dkd", T, *batch, alpha=a, beta=b)
    np.testing.assert_allclose(got, np_dkd(*batch, T, a, b), rtol=2e-3, atol=1e-4)


def test_dkd_with_unit_weights_is_not_plain_kd_but_decomposes_it(batch):
    # Zhao et al.: KD = TCKD + (1 - p_t) * NCKD. With the NCKD weight set to (1 - p_t) per
    # sample we must recover KD; check the identity with the NumPy pieces.
    labels, teacher, student = batch
    T = 3.0
    p_t = np_softmax(teacher / T)[np.arange(len(labels)), labels]
    tckd = np_dkd(labels, teacher, student, T, 1.0, 0.0)
    nckd = np_dkd(labels, teacher, student, T, 0.0, 1.0)
    np.testing.assert_allclose(tckd + (1 - p_t) * nckd, np_kd_loss(labels, teacher, student, 0.0, T), rtol=1e-6)


def test_lskd_matches_numpy_reference_and_ignores_logit_scale(batch):
    labels, teacher, student = batch
    got = soft_term("lskd", 2.0, *batch)
    np.testing.assert_allclose(got, np_lskd(teacher, student, 2.0), rtol=1e-3, atol=1e-5)
    shifted = soft_term("lskd", 2.0, labels, teacher * 5 + 3, student)
    np.testing.assert_allclose(shifted, got, rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("T, beta, gamma", [(1.0, 1.0, 1.0), (4.0, 2.0, 0.5)])
def test_dist_matches_numpy_reference(batch, T, beta, gamma):
    got = soft_term("dist", T, *batch, beta=beta, gamma=gamma)
    np.testing.assert_allclose(got, np_dist(batch[1], batch[2], T, beta, gamma), rtol=1e-3, atol=1e-5)


def test_mse_matches_numpy_reference(batch):
    got = soft_term("mse", 1.0, *batch)
    np.testing.assert_allclose(got, ((batch[2] - batch[1]) ** 2).mean(1), rtol=1e-5)


# ---- the objective: TrainingModel.compute_loss -------------------------------------------------

def model_for(params=None, regularizer=None, hint_width=0):
    """A TrainingModel over a 5-class network; compute_loss is called with given logits. A
    FitNets hint guides its layer `hidden` (distill.fitnet.student_layer)."""
    inputs = keras.Input((3,))
    hidden = keras.layers.Dense(4, name="hidden", kernel_regularizer=regularizer)(inputs)
    network = keras.Model(inputs, keras.layers.Dense(5, name="logits")(hidden))
    goal = HARD_LABELS if params is None else objective.objective(
        methods.build(params.distill, params.temperature), params.alpha, {"hint": (hint_width,)})
    return training_model(network, goal)


def distill_params(method="kd", **overrides):
    return validated(distill={"method": method, "fitnet": {"student_layer": "hidden"}}, **overrides)


def targets_for(labels, teacher, features=None):
    t = {LABELS: tf.constant(labels, tf.int32), TEACHER_LOGITS: tf.constant(teacher, tf.float32)}
    if features is not None:
        t[feature_target("hint")] = tf.constant(features, tf.float32)
    return t


def logged(model) -> dict:
    return {m.name: float(m.result()) for m in model.metrics if m.name != "loss"}


@pytest.mark.parametrize("alpha", [0.0, 0.1, 0.5, 1.0])
@pytest.mark.parametrize("temperature", [1.0, 4.0, 10.0])
def test_kd_objective_matches_numpy_reference_and_logs_each_term(batch, alpha, temperature):
    labels, teacher, student = batch
    model = model_for(distill_params(alpha=alpha, temperature=temperature))
    loss = model.compute_loss(y=targets_for(labels, teacher), y_pred=tf.constant(student, tf.float32))
    np.testing.assert_allclose(float(loss), np.mean(np_kd_loss(labels, teacher, student, alpha, temperature)),
                               rtol=1e-4)
    terms = logged(model)
    np.testing.assert_allclose(terms["hard_ce"], np.mean(np_kd_loss(labels, teacher, student, 1.0, temperature)),
                               rtol=1e-5)
    # the soft term is logged even at alpha = 1, where it is not in the loss
    np.testing.assert_allclose(terms["soft_loss"], np.mean(np_kd_loss(labels, teacher, student, 0.0, temperature)),
                               rtol=1e-4)


def test_hard_label_objective_is_the_cross_entropy_and_accuracy_reads_the_labels(batch):
    labels, teacher, student = batch
    model = model_for()
    targets = {LABELS: tf.constant(labels, tf.int32)}
    loss = model.compute_loss(y=targets, y_pred=tf.constant(student, tf.float32))
    np.testing.assert_allclose(float(loss), np.mean(hard_ce(labels, student)), rtol=1e-6)
    model.compute_metrics(None, targets, tf.one_hot(labels, 5) * 10.0)
    assert logged(model) == {"accuracy": 1.0, "hard_ce": pytest.approx(float(loss), rel=1e-6)}


def test_label_smoothing_is_the_cross_entropy_with_smoothed_one_hot_targets(batch):
    labels, _, student = batch
    smoothing, classes = 0.2, student.shape[1]
    targets = np.eye(classes)[labels] * (1 - smoothing) + smoothing / classes
    expected = -(targets * np_log_softmax(student)).sum(axis=1)
    np.testing.assert_allclose(hard_ce(labels, tf.constant(student, tf.float32), smoothing), expected, rtol=1e-5)
    model = model_for()
    model.objective = Objective(label_smoothing=smoothing)  # the teacher's objective
    loss = model.compute_loss(y={LABELS: tf.constant(labels, tf.int32)}, y_pred=tf.constant(student, tf.float32))
    np.testing.assert_allclose(float(loss), expected.mean(), rtol=1e-5)


LOGIT_METHODS = [name for name in METHODS if not methods.build(validated().distill.model_copy(update={"method": name}),
                                                                  2.0).features]


@pytest.mark.parametrize("method", LOGIT_METHODS)
def test_every_logit_method_mixes_with_alpha_and_logs_its_term(batch, method):
    labels, teacher, student = batch
    params = distill_params(method, alpha=0.3)
    model = model_for(params)
    loss = model.compute_loss(y=targets_for(labels, teacher), y_pred=tf.constant(student, tf.float32))
    term = soft_term(method, params.temperature, *batch)
    np.testing.assert_allclose(float(loss), np.mean(0.3 * hard_ce(labels, student) + 0.7 * term), rtol=1e-5)
    assert logged(model).keys() == {"accuracy", "hard_ce", "soft_loss"}
    np.testing.assert_allclose(logged(model)["soft_loss"], np.mean(term), rtol=1e-5)


def test_a_feature_method_adds_its_weighted_term_and_logs_it(batch):
    """FitNets: alpha * CE + (1 - alpha) * KD + weight * MSE(the projected student layer, the
    teacher layer); each term logged as it enters the loss."""
    labels, teacher, student = batch
    params = validated(alpha=0.3, distill={"method": "fitnet", "fitnet": {"student_layer": "hidden", "weight": 2.5}})
    rng = np.random.default_rng(1)
    features, projected = rng.normal(size=(16, 7)), rng.normal(size=(16, 7))
    model = model_for(params, hint_width=7)
    y_pred = [tf.constant(student, tf.float32), tf.constant(projected, tf.float32)]  # [logits, projected hint]
    loss = model.compute_loss(y=targets_for(labels, teacher, features), y_pred=y_pred)
    kd = np_kd_loss(labels, teacher, student, 0.0, params.temperature)
    hint = 2.5 * ((projected - features) ** 2).mean(1)
    np.testing.assert_allclose(float(loss), np.mean(0.3 * hard_ce(labels, student) + 0.7 * kd + hint), rtol=1e-5)
    terms = logged(model)
    np.testing.assert_allclose([terms["soft_loss"], terms["hint_loss"]], [kd.mean(), hint.mean()], rtol=1e-4)
    assert [layer.name for layer in model.layers][-2:] == ["logits", "hint_projection"]  # 4 -> 7, trained with it


def test_dkd_warmup_ramps_the_soft_term(batch):
    labels, teacher, student = batch
    params = validated(alpha=0.0, distill={"method": "dkd", "dkd": {"warmup_epochs": 4}})
    model = model_for(params)
    (warmup,) = model.objective.callbacks()
    full = soft_term("dkd", params.temperature, *batch, warmup_epochs=4).mean()
    for epoch, factor in [(0, 0.25), (1, 0.5), (3, 1.0), (9, 1.0)]:
        warmup.on_epoch_begin(epoch)
        loss = model.compute_loss(y=targets_for(labels, teacher), y_pred=tf.constant(student, tf.float32))
        np.testing.assert_allclose(float(loss), factor * full, rtol=1e-5)


def test_a_weight_regulariser_enters_the_loss_but_not_the_logged_terms(batch):
    labels, teacher, student = batch
    params = distill_params(alpha=0.5)
    plain, regularised = model_for(params), model_for(params, regularizer=keras.regularizers.L2(0.5))
    regularised.set_weights(plain.get_weights())
    regularised(tf.zeros((1, 3)))  # the regularisation losses are collected by a call
    losses = [float(m.compute_loss(y=targets_for(labels, teacher), y_pred=tf.constant(student, tf.float32)))
              for m in (plain, regularised)]
    penalty = 0.5 * float(np.sum(np.square(regularised.get_layer("hidden").kernel.numpy())))
    np.testing.assert_allclose(losses[1] - losses[0], penalty, rtol=1e-4)
    assert logged(plain) == logged(regularised)


# ---- attention transfer: a feature method added through the interface ------------------------------

def np_attention(features):
    """Zagoruyko & Komodakis 2017: the mean over channels of the squared activations, each map
    scaled to unit L2 norm."""
    energy = (features.astype(np.float64) ** 2).mean(-1)
    return energy / np.sqrt((energy**2).sum(axis=(1, 2), keepdims=True))


def test_attention_transfer_matches_numpy_reference_and_adds_its_weighted_term(batch):
    from kdflow.distill.methods import attention_map

    labels, teacher, student = batch
    params = validated(distill={"method": "at", "at": {"weight": 500.0}})
    method = methods.build(params.distill, params.temperature)
    (maps,) = method.features
    assert (maps.name, maps.teacher_layer, maps.student_layer) == ("attention", "stage1_block2_out", "pool0")
    rng = np.random.default_rng(2)
    t_feat, s_feat = rng.normal(size=(16, 5, 4, 6)), rng.normal(size=(16, 5, 4, 3))  # same size, other widths
    t_side = attention_map(tf.constant(t_feat, tf.float32))
    s_side = maps.student(tf.constant(s_feat, tf.float32), tuple(t_side.shape[1:]))
    np.testing.assert_allclose(t_side.numpy(), np_attention(t_feat), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(s_side.numpy(), np_attention(s_feat), rtol=1e-5, atol=1e-7)
    terms = method.terms(Seen(tf.constant(labels), tf.constant(teacher, tf.float32), tf.constant(student, tf.float32),
                              teacher={"attention": t_side}, student={"attention": s_side}))
    expected = 500.0 * ((np_attention(s_feat) - np_attention(t_feat)) ** 2).mean(axis=(1, 2))
    np.testing.assert_allclose(terms["attention_loss"].numpy(), expected, rtol=1e-4)
    np.testing.assert_allclose(terms["soft_loss"].numpy(), np_kd_loss(labels, teacher, student, 0.0, params.temperature),
                               rtol=1e-4)


def test_attention_maps_of_other_resolutions_are_compared_at_the_teachers():
    from kdflow.distill.methods import attention_map

    params = validated(distill={"method": "at"})
    (maps,) = methods.build(params.distill, params.temperature).features
    teacher = np.full((4, 6, 6, 2), 0.1, np.float32)
    for i, (r, c) in enumerate([(0, 0), (0, 4), (4, 0), (4, 4)]):  # each image's energy in another corner
        teacher[i, r:r + 2, c:c + 2] = 1.0
    same = np.repeat(np.repeat(teacher, 2, axis=1), 2, axis=2)  # the same spatial energy at twice the size
    t_side = attention_map(tf.constant(teacher)).numpy()
    s_same = maps.student(tf.constant(same), t_side.shape[1:]).numpy()
    s_other = maps.student(tf.constant(same[::-1]), t_side.shape[1:]).numpy()  # other images' maps
    assert s_same.shape == t_side.shape == (4, 6, 6)
    np.testing.assert_allclose((s_same**2).sum(axis=(1, 2)), 1.0, rtol=1e-5)  # unit norm after resizing
    close, far = (((s - t_side) ** 2).mean(axis=(1, 2)) for s in (s_same, s_other))
    assert (close < 0.05 * far).all(), (close, far)


def test_a_student_learns_with_attention_transfer_from_a_trained_teacher():
    """The method end to end in-process: the teacher's maps computed over the splits as distill
    computes them, the student's 3x3 maps trained against the teacher's 6x6 (resized, with
    gradients), a student that learns, and no trace of the maps in the shipped model."""
    from conftest import distilled_students, make_prepared
    from kdflow.core import KdflowError
    from kdflow.teacher import train as teachers
    from kdflow.views import cache

    data = make_prepared()
    schedule = {"batch_size": 16, "learning_rate": 0.01, "lr_floor": 0.1, "amsgrad": False, "patience": None}
    params = validated(repeats=1, student={"arch": "notebook_student"},
                       train_teacher={**schedule, "epochs": 8, "augment": {"shift": 0.0}},
                       train_student={**schedule, "epochs": 6},
                       distill={"method": "at", "at": {"teacher_layer": "relu0", "student_layer": "pool0"}})
    teacher, _ = teachers.train(params.teacher, params.train_teacher, params.seed, data)
    method = methods.build(params.distill, params.temperature)
    computed = cache.compute(teacher, data)
    targets = {split: {TEACHER_LOGITS: computed[split]} for split in ("train", "val")}
    for split, sides in cache.teacher_features(teacher, data, None, method.features).items():
        targets[split].update(sides)
    assert targets["val"][feature_target("attention")].shape == (len(data.xy("val")[1]), 6, 6)  # relu0: 6x6x8
    (student, summary), = list(distilled_students(params, data, targets))
    assert summary["val_accuracy"] > 0.6 and summary["attention_loss"] > 0  # 3 classes: it learned
    assert [layer.name for layer in student.layers] == ["image", "conv0", "relu0", "pool0", "flatten", "logits"]
    flat_layer = params.distill.model_copy(update={"at": params.distill.at.model_copy(update={"teacher_layer": "dense0"})})
    with pytest.raises(KdflowError, match=r"distill.at.teacher_layer = 'dense0' gives shape \(None, 32\): attention"):
        cache.teacher_features(teacher, data, None, methods.build(flat_layer, params.temperature).features)


def test_an_image_without_a_label_takes_the_teachers_on_every_term_and_is_left_out_of_the_accuracy(batch):
    """NO_LABEL rows: the hard term (and alpha) read the teacher's argmax; the pseudo-labelled
    students' objective is that hard term alone; the training accuracy counts labelled rows only."""
    from kdflow.core.prepared import NO_LABEL
    from kdflow.training.objective import PseudoLabels

    labels, teacher, student = batch
    unlabeled = np.arange(len(labels)) % 3 == 0
    given = np.where(unlabeled, NO_LABEL, labels)
    stand_in = np.where(unlabeled, teacher.argmax(axis=1), labels)
    for alpha in (0.0, 0.3, 1.0):
        model = model_for(distill_params(alpha=alpha, temperature=2.0))
        loss = model.compute_loss(y=targets_for(given, teacher), y_pred=tf.constant(student, tf.float32))
        np.testing.assert_allclose(float(loss), np.mean(np_kd_loss(stand_in, teacher, student, alpha, 2.0)), rtol=1e-4)
    inputs = keras.Input((5,))
    pseudo = training_model(keras.Model(inputs, keras.layers.Dense(5)(inputs)), PseudoLabels())
    loss = pseudo.compute_loss(y=targets_for(given, teacher), y_pred=tf.constant(student, tf.float32))
    np.testing.assert_allclose(float(loss), np.mean(hard_ce(stand_in, student)), rtol=1e-6)
    # accuracy: a student right on every labelled row and wrong on every unlabelled one scores 1
    predicted = np.where(unlabeled, (labels + 1) % 5, labels)
    pseudo.compute_metrics(None, targets_for(given, teacher), tf.one_hot(predicted, 5) * 10.0)
    assert float(pseudo.accuracy_tracker.result()) == 1.0
