"""Intervals, paired tests and calibration against published and hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from stages.common.stats import accuracy_with_interval, calibration, mcnemar, wilson_interval


@pytest.mark.parametrize(
    ("k", "n", "low", "high"),
    [
        # Newcombe (1998), "Two-sided confidence intervals for the single proportion", Table I,
        # method 3 (Wilson score, no continuity correction).
        (81, 263, 0.2553, 0.3662),
        (15, 148, 0.0624, 0.1605),
        (0, 20, 0.0000, 0.1611),
        (1, 29, 0.0061, 0.1718),
        # The default split's test set with one error (issue 17): 98.4 % to 99.95 %.
        (358, 359, 0.9844, 0.9995),
    ],
)
def test_wilson_interval_matches_published_values(k: int, n: int, low: float, high: float) -> None:
    got = wilson_interval(k, n)
    assert got == pytest.approx((low, high), abs=5e-5)


def test_wilson_interval_of_all_right_reaches_one() -> None:
    low, high = wilson_interval(20, 20)
    assert high == 1.0
    assert low == pytest.approx(1 - 0.1611, abs=5e-5)


def test_accuracy_with_interval_counts() -> None:
    result = accuracy_with_interval(np.array([True] * 358 + [False]))
    assert result["right"] == 358 and result["n"] == 359
    assert result["accuracy"] == pytest.approx(358 / 359, abs=1e-6)
    assert result["accuracy_low"] < result["accuracy"] < result["accuracy_high"]


def paired(only_a: int, only_b: int, both: int = 10, neither: int = 3):
    """Boolean "right" vectors of two classifiers with the given discordant counts."""
    a = [True] * only_a + [False] * only_b + [True] * both + [False] * neither
    b = [False] * only_a + [True] * only_b + [True] * both + [False] * neither
    return np.array(a), np.array(b)


@pytest.mark.parametrize(
    ("only_a", "only_b", "exact", "mid"),
    [
        # Fagerland, Lydersen and Laake (2013), BMC Med Res Methodol 13:91, the airway
        # hyper-responsiveness example (1 vs 7 discordant pairs): exact 0.070, mid-p 0.039.
        (1, 7, 0.0703, 0.0391),
        (7, 1, 0.0703, 0.0391),
        # 0 vs 5: exact 2 / 2**5 = 0.0625, mid-p half of it.
        (0, 5, 0.0625, 0.03125),
        # The head against the best baseline on one seed in issue 17: 0 vs 1, nothing to see.
        (0, 1, 1.0, 0.5),
        (3, 3, 1.0, 1.0),
    ],
)
def test_mcnemar_exact_and_mid_p(only_a: int, only_b: int, exact: float, mid: float) -> None:
    result = mcnemar(*paired(only_a, only_b))
    assert (result["only_a"], result["only_b"]) == (only_a, only_b)
    assert result["p_exact"] == pytest.approx(exact, abs=1e-4)
    assert result["p_mid"] == pytest.approx(mid, abs=1e-4)


def test_mcnemar_without_discordant_pairs_is_one() -> None:
    result = mcnemar(*paired(0, 0))
    assert result["p_exact"] == result["p_mid"] == 1.0


def test_mcnemar_refuses_unpaired_vectors() -> None:
    with pytest.raises(ValueError, match="paired"):
        mcnemar(np.ones(3, bool), np.ones(4, bool))


def test_calibration_by_hand() -> None:
    # Two images at confidence 0.95 (one right), two at 0.55 (both right), 2 classes.
    probs = np.array([[0.95, 0.05], [0.95, 0.05], [0.45, 0.55], [0.45, 0.55]])
    labels = np.array([0, 1, 1, 1])
    result = calibration(probs, labels, bins=10)
    # Bin (0.9, 1]: accuracy 0.5, confidence 0.95, gap 0.45; bin (0.5, 0.6]: 1.0 vs 0.55, 0.45.
    assert result["ece"] == pytest.approx(0.45)
    assert result["max_gap"] == pytest.approx(0.45)
    assert result["count"][9] == 2 and result["count"][5] == 2 and sum(result["count"]) == 4
    assert result["accuracy"][9] == 0.5 and result["confidence"][5] == pytest.approx(0.55)
    assert result["accuracy"][0] is None


def test_calibration_of_a_calibrated_predictor_is_near_zero() -> None:
    rng = np.random.default_rng(0)
    confidence = rng.uniform(0.5, 1.0, 200_000)
    right = rng.uniform(size=confidence.size) < confidence
    labels = np.where(right, 0, 1)
    probs = np.stack([confidence, 1 - confidence], axis=1)
    assert calibration(probs, labels)["ece"] < 0.005


def test_calibration_edges_fall_in_the_right_bins() -> None:
    # Confidence exactly 1.0 goes to the last bin, exactly 0.5 to (0.4, 0.5].
    probs = np.array([[1.0, 0.0], [0.5, 0.5]])
    result = calibration(probs, np.array([0, 0]), bins=10)
    assert result["count"][9] == 1 and result["count"][4] == 1
