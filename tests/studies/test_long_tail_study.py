"""Helpers of studies/long_tail_study.py: the vectorised head trainer, the schedule, the splits."""

import numpy as np
import pytest

from .study_loader import load_study


@pytest.fixture(scope="module")
def lts():
    return load_study("long_tail_study.py")


def _toy(num_seeds=2, n=48, dim=5, num_classes=4):
    rng = np.random.default_rng(3)
    y = np.stack([np.repeat(np.arange(num_classes), n // num_classes)[rng.permutation(n)] for _ in range(num_seeds)])
    x = (rng.normal(size=[num_seeds, n, dim]) + y[..., None] * 0.5).astype(np.float32)
    counts = [12, 12, 12, 12]
    return x, y, counts


@pytest.mark.parametrize("name", ["softmax", "cb_focal_g0.5_b0.99", "ldam_drw"])
def test_stacked_heads_train_like_separate_heads(lts, name):
    """Head k of a stack ends where a one-head stack with its seed and learning rate ends."""
    spec = next(s for s in lts.loss_specs() if s.name == name)
    x, y, counts = _toy()
    seeds, lrs = [0, 0, 1], [0.1, 0.5, 0.3]
    stack = lts.HeadStack(spec, 4, 5, seeds, lrs, weight_decay=1e-3)
    stack.fit(x, y, counts, epochs=3, batch_size=8)
    for k, (seed, lr) in enumerate(zip(seeds, lrs)):
        single = lts.HeadStack(spec, 4, 5, [seed], [lr], weight_decay=1e-3)
        single.fit(x, y, counts, epochs=3, batch_size=8)
        np.testing.assert_allclose(stack.kernel.numpy()[k], single.kernel.numpy()[0], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(stack.bias.numpy()[k], single.bias.numpy()[0], rtol=1e-4, atol=1e-5)
    assert not np.allclose(stack.kernel.numpy()[0], stack.kernel.numpy()[1])  # the rates differ


def test_one_step_matches_numpy_sgd(lts):
    """One softmax step from the initial kernel: W - lr * mult * (dCE/dW + wd W), float64 loops."""
    spec = lts.LossSpec("softmax", "softmax")
    x, y, counts = _toy(num_seeds=1, n=8)
    stack = lts.HeadStack(spec, 4, 5, [0], [0.7], weight_decay=0.01)
    w0 = stack.kernel.numpy()[0].astype(np.float64)
    stack.fit(x, y, counts, epochs=1, batch_size=8)  # one step; its batch is a permutation of all 8 rows
    grad = np.zeros_like(w0)
    for i in range(8):
        z = x[0, i].astype(np.float64) @ w0
        p = np.exp(z - z.max())
        p /= p.sum()
        for d in range(5):
            for c in range(4):
                grad[d, c] += x[0, i, d] * (p[c] - (c == y[0, i])) / 8
    mult = lts.lr_multipliers(1)[0]
    np.testing.assert_allclose(stack.kernel.numpy()[0], w0 - 0.7 * mult * (grad + 0.01 * w0), rtol=1e-5, atol=1e-6)


def test_lr_multipliers_follow_the_seed_schedule(lts):
    mult = lts.lr_multipliers(100)
    np.testing.assert_allclose(mult[:5], [0.2, 0.4, 0.6, 0.8, 1.0], rtol=1e-6)
    assert mult[79] == 1.0
    np.testing.assert_allclose([mult[80], mult[89], mult[90], mult[99]], [1e-2, 1e-2, 1e-4, 1e-4], rtol=1e-6)


def test_splits_have_the_cifar_long_tail_profile_and_balanced_eval(lts):
    world = lts.WORLDS["fine"]
    data = lts.make_splits(world, 100, num_seeds=2)
    counts = data["counts"]
    assert counts[0] == 500 and counts[-1] == 5 and sum(counts) == 10847  # CIFAR-100-LT, IF 100
    for s in range(2):
        np.testing.assert_array_equal(np.bincount(data["y_train"][s], minlength=100), counts)
        assert set(np.bincount(data["y_test"][s]).tolist()) == {world.test_per_class}
        assert set(np.bincount(data["y_val"][s]).tolist()) == {world.val_per_class}
    assert not np.allclose(data["x_train"][0][:5], data["x_train"][1][:5])  # seeds draw their own examples


def test_loss_grid_is_the_seeds_search_space(lts):
    names = [s.name for s in lts.loss_specs()]
    assert len([n for n in names if n.startswith("cb_")]) == 4 + 4 + 12  # softmax, sigmoid, focal x 3 gammas
    assert {"softmax", "sigmoid", "focal_g0.5", "focal_g1", "focal_g2", "ldam_drw", "logit_adj",
            "balanced_softmax"} <= set(names)


def test_ldam_variants_switch_reweighting_as_named(lts):
    specs = {s.name: s for s in lts.loss_specs()}
    counts = [30, 10, 5, 3]
    assert specs["ldam"].build(counts, 100).drw_step == -1  # never re-weighted
    cb = specs["ldam_cb"].build(counts, 100)
    assert cb.drw_step == 0 and float(cb.drw_active.numpy()) == 1.0  # re-weighted from the first step
    assert specs["ldam_drw"].build(counts, 100).drw_step == 80  # the last 20 % (Cao et al.: 160 of 200 epochs)
    assert {specs[n].head for n in ("ldam", "ldam_cb", "ldam_drw")} == {"cosine"}
