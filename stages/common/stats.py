"""Uncertainty for the numbers the pipeline reports: intervals, paired tests, calibration.

* ``wilson_interval``: the Wilson score interval of a proportion (accuracy = right / n), from
  SciPy's ``binomtest``. With 358 of 359 right the interval is 98.4 % to 99.95 %: a test set of
  a few hundred images cannot tell 99.7 % from 99 %.
* ``mcnemar``: McNemar's test on paired predictions (two classifiers on the same test images).
  Only the discordant pairs count: ``b`` images only the first gets right, ``c`` only the second.
  The exact (conditional binomial) p-value and the mid-p value (Fagerland, Lydersen and Laake
  2013: closer to the nominal level than the exact test, never below the asymptotic one by much)
  are both reported; the README quotes the mid-p.
* ``calibration``: expected calibration error of the top-class confidence over equal-width bins,
  with the per-bin table that the reliability figure draws.

Only NumPy and SciPy (a dependency of scikit-learn) are needed: no TensorFlow.
"""

from __future__ import annotations

import numpy as np


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """The Wilson score interval (no continuity correction) for ``successes`` out of ``n``."""
    from scipy.stats import binomtest

    if n <= 0:
        return (0.0, 1.0)
    ci = binomtest(int(successes), int(n)).proportion_ci(confidence, method="wilson")
    return (max(0.0, float(ci.low)), min(1.0, float(ci.high)))


def accuracy_with_interval(right: np.ndarray) -> dict[str, float | int]:
    """Accuracy of a boolean per-image vector, with its 95 % Wilson interval and counts."""
    right = np.asarray(right, dtype=bool)
    k, n = int(right.sum()), int(right.size)
    low, high = wilson_interval(k, n)
    return {
        "accuracy": round(k / n, 6) if n else 0.0,
        "accuracy_low": round(low, 6),
        "accuracy_high": round(high, 6),
        "right": k,
        "n": n,
    }


def mcnemar(right_a: np.ndarray, right_b: np.ndarray) -> dict[str, float | int]:
    """McNemar's test of two classifiers scored on the same images (boolean "was right" vectors).

    Returns the discordant counts (``only_a``: A right and B wrong; ``only_b``: the reverse) and
    the two-sided exact and mid-p values under the null that both are equally accurate
    (each discordant pair is a fair coin). No discordant pair gives p = 1: no evidence either way.
    """
    from scipy.stats import binom

    right_a, right_b = np.asarray(right_a, dtype=bool), np.asarray(right_b, dtype=bool)
    if right_a.shape != right_b.shape:
        raise ValueError(f"paired predictions differ in shape: {right_a.shape} vs {right_b.shape}")
    only_a = int(np.sum(right_a & ~right_b))
    only_b = int(np.sum(~right_a & right_b))
    n, k = only_a + only_b, min(only_a, only_b)
    if n == 0:
        exact = mid_p = 1.0
    else:
        tail = float(binom.cdf(k, n, 0.5))
        exact = min(1.0, 2 * tail)
        mid_p = min(1.0, 2 * tail - float(binom.pmf(k, n, 0.5)))
    return {
        "only_a": only_a,
        "only_b": only_b,
        "p_exact": round(exact, 6),
        "p_mid": round(mid_p, 6),
    }


def calibration(probs: np.ndarray, labels: np.ndarray, bins: int = 10) -> dict:
    """Expected calibration error of the top-class confidence, over ``bins`` equal-width bins.

    A prediction with confidence c falls in bin ``ceil(c * bins) - 1`` (bins are (lo, hi], the
    first one closed at 0). ECE = sum over bins of (share of images) * |accuracy - mean confidence|.
    Returns ``ece``, ``max_gap`` (the worst bin), and per-bin ``lower``, ``upper``, ``count``,
    ``accuracy`` and ``confidence`` lists (empty bins: count 0, accuracy and confidence None).
    """
    probs, labels = np.asarray(probs, dtype=np.float64), np.asarray(labels)
    confidence = probs.max(axis=1)
    right = probs.argmax(axis=1) == labels
    which = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)
    count = np.bincount(which, minlength=bins)
    sum_conf = np.bincount(which, weights=confidence, minlength=bins)
    sum_right = np.bincount(which, weights=right.astype(np.float64), minlength=bins)
    filled = count > 0
    gaps = np.abs(sum_right[filled] - sum_conf[filled]) / count[filled]
    n = max(1, len(labels))
    return {
        "ece": round(float(np.sum(count[filled] * gaps) / n), 6),
        "max_gap": round(float(gaps.max()) if gaps.size else 0.0, 6),
        "bins": bins,
        "lower": [round(i / bins, 6) for i in range(bins)],
        "upper": [round((i + 1) / bins, 6) for i in range(bins)],
        "count": count.tolist(),
        "accuracy": [
            round(float(r / c), 6) if c else None for r, c in zip(sum_right, count, strict=True)
        ],
        "confidence": [
            round(float(s / c), 6) if c else None for s, c in zip(sum_conf, count, strict=True)
        ],
    }
