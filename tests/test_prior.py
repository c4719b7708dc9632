"""The prior correction (shared.model.prior): the training corpus's class prior taken back from the
probabilities, with a strength fitted for class-balanced accuracy."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from shared.model.prior import PriorCorrection, balanced_accuracy, fit_prior
from shared.model.signals import Signals

CODES = ["2211", "2212", "5120", "8322"]


def _biased_model(seed: int, n: int = 400) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Validation records spread evenly over the groups, scored by a model that learnt a training corpus
    where 2211 holds 70% of the records: its probabilities carry that prior."""
    rng = np.random.default_rng(seed)
    train_labels = [0] * 700 + [1] * 100 + [2] * 100 + [3] * 100
    prior = np.bincount(train_labels) / len(train_labels)
    labels = rng.integers(0, len(CODES), size=n)
    likelihood = np.exp(rng.normal(size=(n, len(CODES))))
    likelihood[np.arange(n), labels] *= 3.0
    probs = likelihood * prior
    return probs / probs.sum(axis=1, keepdims=True), labels, train_labels


def test_balanced_accuracy_weighs_every_group_alike() -> None:
    probs = np.eye(3)[[0, 0, 0, 1]]  # three records of group 0 right, one of group 2 wrong
    assert balanced_accuracy(probs, np.array([0, 0, 0, 2])) == 0.5


def test_fitted_correction_takes_the_prior_back_and_round_trips(tmp_path: Path) -> None:
    probs, labels, train_labels = _biased_model(0)
    prior = fit_prior(CODES, train_labels, probs, labels, fitted_on="test")
    assert prior.counts == {"2211": 700, "2212": 100, "5120": 100, "8322": 100}
    assert prior.strength >= 0.5
    assert prior.val_balanced_after > prior.val_balanced_before + 0.05  # type: ignore[operator]
    # on records it was not fitted on: more right answers, and still distributions
    probs, labels, _ = _biased_model(1)
    out = prior.apply(CODES, probs)
    np.testing.assert_allclose(out.sum(axis=1), 1.0, atol=1e-5)
    assert (out.argmax(1) == labels).mean() > (probs.argmax(1) == labels).mean() + 0.05
    prior.save(tmp_path)
    assert PriorCorrection.load(tmp_path) == prior
    assert PriorCorrection.load(tmp_path / "absent") is None


def test_unbiased_model_keeps_its_probabilities() -> None:
    probs, labels, _ = _biased_model(2)
    even = [0, 1, 2, 3] * 100  # a balanced corpus: nothing to take back, whatever the strength
    prior = fit_prior(CODES, even, probs, labels)
    np.testing.assert_allclose(prior.apply(CODES, probs, strength=1.0), probs, atol=1e-6)
    assert PriorCorrection.from_labels(CODES, even).apply(CODES, probs) is probs  # strength 0: untouched


def test_a_code_the_counts_do_not_hold_counts_once() -> None:
    prior = PriorCorrection(strength=1.0, counts={"2211": 3})
    probs = np.array([[0.5, 0.5]])
    # 2211 is three times as frequent as the unknown 9999: divided out, the answer moves to 9999
    np.testing.assert_allclose(prior.apply(["2211", "9999"], probs), [[0.25, 0.75]], atol=1e-6)


def test_signals_apply_the_correction_last() -> None:
    probs, _, train_labels = _biased_model(3, n=5)
    prior = PriorCorrection.from_labels(CODES, train_labels, strength=1.0)
    plain = Signals(CODES).mix(["a"] * 5, np.zeros((5, 8), dtype=np.float32), probs)
    corrected = Signals(CODES, prior=prior).mix(["a"] * 5, np.zeros((5, 8), dtype=np.float32), probs)
    np.testing.assert_allclose(plain, probs, atol=1e-6)
    np.testing.assert_allclose(corrected, prior.apply(CODES, probs), atol=1e-6)
    assert Signals(CODES, prior=prior).describe() == {"prior": {"strength": 1.0}}
