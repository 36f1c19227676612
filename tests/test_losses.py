import numpy as np
import pytest
import tensorflow as tf

from kdflow.losses import METHODS, accuracy, hard_ce, pack_targets, soft_kl


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
    loss, _ = METHODS["kd"](alpha=alpha, temperature=temperature)
    got = loss(tf.constant(pack_targets(labels, teacher)), tf.constant(student, tf.float32)).numpy()
    want = np_kd_loss(labels, teacher, student, alpha, temperature)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_alpha_extremes_select_one_term(batch):
    labels, teacher, student = batch
    targets, logits = tf.constant(pack_targets(labels, teacher)), tf.constant(student, tf.float32)
    only_ce, _ = METHODS["kd"](alpha=1.0, temperature=4.0)
    np.testing.assert_allclose(only_ce(targets, logits), hard_ce(targets, logits), rtol=1e-6)
    only_soft, _ = METHODS["kd"](alpha=0.0, temperature=4.0)
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
