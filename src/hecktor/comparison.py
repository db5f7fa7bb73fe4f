"""A network against its baseline on the same patients: paired bootstrap intervals and a verdict.

One figure of two models says little on a few dozen patients: a C-index of 0.60 against 0.55 is
noise at that size. Every headline comparison therefore resamples the patients (with replacement,
the same draw for both models, so that the patients' difficulty cancels in the difference) and
reports a percentile interval for each model and for their difference. The verdict names a model
only when the difference's interval excludes zero, and says when the network's own interval
includes chance (0.5 for a C-index, an AUC or a balanced accuracy).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

Score = Callable[[np.ndarray], float]  # patient indices (possibly repeated) -> figure

NETWORK_AHEAD = "network ahead"
BASELINE_AHEAD = "baseline ahead"
NO_DIFFERENCE = "not distinguishable from the baseline"
CHANCE = "network not distinguishable from chance"
UNKNOWN = "n/a"
MIN_VALID = 0.5  # of the resamples must give a figure for both models (e.g. both classes present)


@dataclass(frozen=True)
class Comparison:
    """A network's and a baseline's figure on the same patients, with 95 % intervals."""

    network: float
    baseline: float
    network_ci: tuple[float, float]
    baseline_ci: tuple[float, float]
    difference_ci: tuple[float, float]
    verdict: str

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def _interval(values: np.ndarray, level: float) -> tuple[float, float]:
    tail = 50 * (1 - level)
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def verdict(
    difference_ci: tuple[float, float],
    network_ci: tuple[float, float],
    chance: float | None = None,
) -> str:
    """What the intervals allow one to say: a model is ahead only when the interval of the
    difference (network minus baseline) excludes zero."""
    low, high = difference_ci
    if not (low == low and high == high):
        return UNKNOWN
    text = NETWORK_AHEAD if low > 0 else BASELINE_AHEAD if high < 0 else NO_DIFFERENCE
    if chance is not None and network_ci[0] <= chance <= network_ci[1]:
        text += f"; {CHANCE}"
    return text


def compare(
    network: Score,
    baseline: Score,
    patients: int,
    resamples: int = 1000,
    seed: int = 0,
    chance: float | None = None,
    level: float = 0.95,
) -> Comparison:
    """Paired percentile bootstrap of two scores over ``patients`` patients.

    A resample where either score is undefined (NaN: one class only, no comparable pair) is skipped;
    when fewer than half give both, the intervals are NaN and the verdict ``n/a``.
    """
    everyone = np.arange(patients)
    point = float(network(everyone)), float(baseline(everyone))
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(resamples if patients > 1 else 0):
        idx = rng.integers(0, patients, patients)
        pair = network(idx), baseline(idx)
        if pair[0] == pair[0] and pair[1] == pair[1]:
            draws.append(pair)
    nan = (float("nan"), float("nan"))
    if not resamples or len(draws) < MIN_VALID * resamples:
        return Comparison(*point, nan, nan, nan, UNKNOWN)
    values = np.asarray(draws, dtype=float)
    network_ci, baseline_ci = _interval(values[:, 0], level), _interval(values[:, 1], level)
    difference_ci = _interval(values[:, 0] - values[:, 1], level)
    return Comparison(
        *point, network_ci, baseline_ci, difference_ci, verdict(difference_ci, network_ci, chance)
    )


def compare_predictions(
    figure: Callable[[np.ndarray, np.ndarray], float],
    truth: np.ndarray,
    network: np.ndarray,
    baseline: np.ndarray,
    resamples: int = 1000,
    chance: float | None = None,
) -> Comparison:
    """:func:`compare` for per-patient predictions scored against per-patient truth (rows of
    ``truth``: a label, or a time and an event) by ``figure(truth, predictions)``."""
    truth, network, baseline = (np.asarray(a) for a in (truth, network, baseline))
    return compare(
        lambda idx: figure(truth[idx], network[idx]),
        lambda idx: figure(truth[idx], baseline[idx]),
        len(truth), resamples, chance=chance,
    )  # fmt: skip


def interval_text(value: float, interval: tuple[float, float] | list[float] | None) -> str:
    """``0.612 [0.55, 0.67]``, or the value alone when there is no interval."""
    if value is None or value != value:
        return "n/a"
    if not interval or any(v is None or v != v for v in interval):  # none, or NaN (null in JSON)
        return f"{value:.3f}"
    return f"{value:.3f} [{interval[0]:.2f}, {interval[1]:.2f}]"
