"""Temperature scaling: probabilities a client can trust, fitted on val, top-1 unchanged.

The head is trained with label smoothing, which makes it under-confident by design. One
temperature ``T`` divides its logits (``softmax(z / T)``; T < 1 sharpens): the T with the least
log-loss on the val split (never test) is what the export stage folds into the shipped model's
last layer and what evaluate draws beside the raw probabilities. Dividing all logits of an
image by the same positive T keeps their order, so every top-1 class stays what it was.
"""

from __future__ import annotations

import numpy as np

BOUNDS = (0.05, 20.0)  # temperatures searched; the fit says when it ends on a bound
FLOOR = 1e-30  # probabilities below this count as this, so their logarithm is finite


def logits(probs: np.ndarray) -> np.ndarray:
    """Logits of softmax probabilities, up to a per-row constant (which softmax ignores)."""
    return np.log(np.maximum(np.asarray(probs, np.float64), FLOOR))


def apply_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    """``softmax(logits(probs) / temperature)``, float32 like the pipeline's probabilities."""
    z = logits(probs) / temperature
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def log_loss(probs: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    z = logits(probs) / temperature
    z -= z.max(axis=1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-log_p[np.arange(len(labels)), labels].mean())


def fit_temperature(probs: np.ndarray, labels: np.ndarray) -> float:
    """The temperature with the least log-loss of ``probs`` (val) against ``labels``, 1.0 when
    there is nothing to fit on. Searched on log T (bounded, scipy's Brent method)."""
    from scipy.optimize import minimize_scalar

    labels = np.asarray(labels, dtype=np.int64)
    if len(labels) == 0:
        return 1.0
    result = minimize_scalar(
        lambda log_t: log_loss(probs, labels, float(np.exp(log_t))),
        bounds=tuple(np.log(BOUNDS)),
        method="bounded",
        options={"xatol": 1e-6},
    )
    return round(float(np.exp(result.x)), 6)
