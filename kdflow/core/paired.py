"""Is one way of reading the same images clearly better than another? A paired comparison of
per-image correctness: a gain of at least MIN_GAIN and an exact McNemar test (a binomial test on
the images where exactly one of the two is right). The import check asks it of input ranges and
class orders, the batch-norm check of inference mode against batch statistics."""

from __future__ import annotations

import numpy as np
from scipy.stats import binomtest

# "Clearly better": at least this much accuracy, and the McNemar test at this level.
MIN_GAIN = 0.05
MAX_P_VALUE = 1e-3


def clearly_better(worse: np.ndarray, better: np.ndarray, max_p_value: float = MAX_P_VALUE) -> bool:
    """Whether the per-image correctness ``better`` clearly beats ``worse`` (same images)."""
    wins, losses = int(np.sum(better & ~worse)), int(np.sum(worse & ~better))
    if (wins - losses) / len(worse) < MIN_GAIN:
        return False
    return binomtest(wins, wins + losses, 0.5, alternative="greater").pvalue < max_p_value
