import numpy as np
import pytest
import tensorflow as tf

from conftest import minimal_params
from kdflow.losses import METHODS, accuracy, distillation_loss, hard_ce, pack_targets, soft_kl
from kdflow.params import validate


def kd_loss_for(alpha, temperature):
    loss, _, _ = distillation_loss(validate(minimal_params(alpha=alpha, temperature=temperature)), 5)
    return loss


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


@pytest.mark.parametrize("alpha", [0.0, 0.1, 0.5, 1.0])
@pytest.mark.parametrize("temperature", [1.0, 4.0, 10.0])
def test_kd_matches_numpy_reference(batch, alpha, temperature):
    labels, teacher, student = batch
    loss = kd_loss_for(alpha, temperature)
    got = loss(tf.constant(pack_targets(labels, teacher)), tf.constant(student, tf.float32)).numpy()
    want = np_kd_loss(labels, teacher, student, alpha, temperature)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_alpha_extremes_select_one_term(batch):
    labels, teacher, student = batch
    targets, logits = tf.constant(pack_targets(labels, teacher)), tf.constant(student, tf.float32)
    only_ce = kd_loss_for(1.0, 4.0)
    np.testing.assert_allclose(only_ce(targets, logits), hard_ce(targets, logits), rtol=1e-6)
    only_soft = kd_loss_for(0.0, 4.0)
    np.testing.assert_allclose(only_soft(targets, logits), soft_kl(targets[:, 1:], logits, 4.0), rtol=1e-6)


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


def test_metrics_read_the_label_column(batch):
    labels, teacher, _ = batch
    targets = tf.constant(pack_targets(labels, teacher))
    perfect = tf.one_hot(labels, 5) * 10.0
    assert accuracy(targets, perfect).numpy().mean() == 1.0
    np.testing.assert_allclose(hard_ce(targets, tf.constant(teacher, tf.float32)),
                               -np_log_softmax(teacher)[np.arange(16), labels], rtol=1e-4)


def test_pack_targets_layout():
    packed = pack_targets([2, 0], [[0.1, 0.2, 0.3], [1.0, 2.0, 3.0]])
    assert packed.shape == (2, 4) and packed.dtype == np.float32
    assert packed[:, 0].tolist() == [2, 0]
    assert pack_targets([1, 2, 3]).shape == (3, 1)


# ---- the other distillation methods, each against a NumPy transcription of its paper ----

from kdflow.losses import dist_term, dkd_term, lskd_term, mse_term  # noqa: E402


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


def tf_args(labels, teacher, student):
    return tf.constant(labels, tf.int32), tf.constant(teacher, tf.float32), tf.constant(student, tf.float32)


@pytest.mark.parametrize("T, a, b", [(4.0, 1.0, 8.0), (1.0, 0.5, 2.0)])
def test_dkd_matches_numpy_reference(batch, T, a, b):
    got = dkd_term(T, a, b)(*tf_args(*batch)).numpy()
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
    got = lskd_term(2.0)(*tf_args(*batch)).numpy()
    np.testing.assert_allclose(got, np_lskd(teacher, student, 2.0), rtol=1e-3, atol=1e-5)
    shifted = lskd_term(2.0)(*tf_args(labels, teacher * 5 + 3, student)).numpy()
    np.testing.assert_allclose(shifted, got, rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("T, beta, gamma", [(1.0, 1.0, 1.0), (4.0, 2.0, 0.5)])
def test_dist_matches_numpy_reference(batch, T, beta, gamma):
    got = dist_term(T, beta, gamma)(*tf_args(*batch)).numpy()
    np.testing.assert_allclose(got, np_dist(batch[1], batch[2], T, beta, gamma), rtol=1e-3, atol=1e-5)


def test_mse_matches_numpy_reference(batch):
    got = mse_term()(*tf_args(*batch)).numpy()
    np.testing.assert_allclose(got, ((batch[2] - batch[1]) ** 2).mean(1), rtol=1e-5)


@pytest.mark.parametrize("method", ["kd", "dkd", "lskd", "dist", "mse", "fitnet"])
def test_every_registered_method_mixes_with_alpha_and_logs_its_term(batch, method):
    labels, teacher, student = batch
    params = validate(minimal_params(alpha=0.3, distill={"method": method}))
    loss, metrics, callbacks = distillation_loss(params, 5)
    names = [m.__name__ for m in metrics]
    # alpha < 1: no soft_loss metric; its mean is derived from the tracked ones (checked below)
    assert names[:2] == ["accuracy", "hard_ce"] and "soft_loss" not in names
    term = METHODS[method](params).term
    soft = lambda targets, outputs: term(labels, targets[:, 1:6], outputs[:, :5])  # noqa: E731
    if method == "fitnet":  # [logits | hint] outputs against [label | logits | features] targets
        rng = np.random.default_rng(1)
        t_feat, s_proj = rng.normal(size=(16, 7)), rng.normal(size=(16, 7))
        targets = tf.constant(pack_targets(labels, teacher, t_feat))
        outputs = tf.constant(np.concatenate([student, s_proj], 1), tf.float32)
        hint = ((s_proj - t_feat) ** 2).mean(1)
        assert names[2] == "hint_loss"
        np.testing.assert_allclose(metrics[2](targets, outputs), hint, rtol=1e-5)
        np.testing.assert_allclose(soft(targets, outputs), np_kd_loss(labels, teacher, student, 0.0, 4.0), rtol=1e-4)
    else:
        targets, outputs = tf.constant(pack_targets(labels, teacher)), tf.constant(student, tf.float32)
        hint = 0.0
    logits = outputs[:, :5]
    want = 0.3 * hard_ce(targets, logits) + 0.7 * soft(targets, outputs) + hint
    np.testing.assert_allclose(loss(targets, outputs), want, rtol=1e-5)
    np.testing.assert_allclose(metrics[0](targets, outputs), accuracy(targets, logits))
    # The epoch's soft_loss / val_soft_loss follow from the means Keras tracks.
    *warmups, soft_logger = callbacks
    assert len(warmups) == (method == "dkd")  # only DKD publishes a warm-up
    means = {"loss": np.mean(loss(targets, outputs)), "hard_ce": np.mean(hard_ce(targets, logits)),
             **({"hint_loss": np.mean(hint)} if method == "fitnet" else {})}
    logs = {**means, **{f"val_{k}": v for k, v in means.items()}}
    soft_logger.on_epoch_end(0, logs)
    for key in ("soft_loss", "val_soft_loss"):
        np.testing.assert_allclose(logs[key], np.mean(soft(targets, outputs)), rtol=1e-4)


def test_soft_loss_is_a_metric_when_the_loss_has_no_soft_term(batch):
    labels, teacher, student = batch
    loss, metrics, callbacks = distillation_loss(validate(minimal_params(alpha=1.0)), 5)
    assert [m.__name__ for m in metrics] == ["accuracy", "hard_ce", "soft_loss"] and not callbacks
    targets, logits = tf.constant(pack_targets(labels, teacher)), tf.constant(student, tf.float32)
    np.testing.assert_allclose(metrics[2](targets, logits), np_kd_loss(labels, teacher, student, 0.0, 4.0), rtol=1e-4)


def test_dkd_warmup_ramps_the_soft_term(batch):
    labels, teacher, student = batch
    params = validate(minimal_params(alpha=0.0, distill={"method": "dkd"}, dkd={"warmup_epochs": 4}))
    loss, _, (warmup, _) = distillation_loss(params, 5)
    targets, logits = tf.constant(pack_targets(labels, teacher)), tf.constant(student, tf.float32)
    full = METHODS["dkd"](params).term(labels, targets[:, 1:6], logits).numpy()
    for epoch, factor in [(0, 0.25), (1, 0.5), (3, 1.0), (9, 1.0)]:
        warmup.on_epoch_begin(epoch)
        np.testing.assert_allclose(loss(targets, logits), factor * full, rtol=1e-5)
