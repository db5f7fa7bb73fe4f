"""Paired bootstrap comparisons: a model is called ahead only where the intervals say so."""

import math

import numpy as np
import pytest

from hecktor import comparison, metrics


def _auc(truth, score):
    return metrics.auc(truth, score)


def test_a_clear_gap_names_the_better_model_and_a_small_one_names_neither():
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 2, 200)
    good = truth + rng.normal(0, 0.5, 200)  # AUC about 0.92
    poor = truth + rng.normal(0, 3.0, 200)  # AUC about 0.6
    ahead = comparison.compare_predictions(_auc, truth, good, poor, 300, chance=0.5)
    assert ahead.verdict == comparison.NETWORK_AHEAD
    assert ahead.difference_ci[0] > 0 and ahead.network_ci[0] < ahead.network < ahead.network_ci[1]
    behind = comparison.compare_predictions(_auc, truth, poor, good, 300, chance=0.5)
    assert behind.verdict == comparison.BASELINE_AHEAD
    close = good + rng.normal(0, 0.05, 200)  # nearly the same calls
    same = comparison.compare_predictions(_auc, truth, close, good, 300, chance=0.5)
    assert same.verdict == comparison.NO_DIFFERENCE
    assert same.difference_ci[0] < 0 < same.difference_ci[1]


def test_a_network_at_chance_is_said_to_be_at_chance():
    rng = np.random.default_rng(1)
    truth = rng.integers(0, 2, 60)
    noise = rng.normal(size=60)
    result = comparison.compare_predictions(_auc, truth, noise, noise + rng.normal(0, 0.1, 60),
                                            300, chance=0.5)  # fmt: skip
    assert result.verdict == f"{comparison.NO_DIFFERENCE}; {comparison.CHANCE}"


def test_the_resamples_are_paired():
    """Two models with the same calls have a difference of exactly zero in every resample: an
    unpaired bootstrap would give an interval around zero of the figures' own width."""
    truth = np.r_[np.zeros(30), np.ones(30)]
    score = np.linspace(0, 1, 60) + np.sin(np.arange(60))
    result = comparison.compare_predictions(_auc, truth, score, score, 200)
    assert result.difference_ci == (0.0, 0.0) and result.verdict == comparison.NO_DIFFERENCE
    assert result.network_ci[1] - result.network_ci[0] > 0.05


def test_too_few_defined_resamples_give_no_verdict():
    def distinct(truth, score):  # undefined on a resample that repeats a patient: most of them
        return 1.0 if len(set(score.tolist())) == len(score) else float("nan")

    result = comparison.compare_predictions(distinct, np.ones(6), np.arange(6.0), np.arange(6.0))
    assert result.verdict == comparison.UNKNOWN and math.isnan(result.network_ci[0])
    assert result.network == 1.0  # the figure itself is still given
    assert (
        comparison.compare_predictions(_auc, np.ones(4), np.ones(4), np.ones(4), 0).verdict == "n/a"
    )


@pytest.mark.parametrize(
    ("difference", "network", "said"),
    [
        ((0.01, 0.2), (0.6, 0.8), comparison.NETWORK_AHEAD),
        ((-0.2, -0.01), (0.6, 0.8), comparison.BASELINE_AHEAD),
        ((-0.01, 0.2), (0.6, 0.8), comparison.NO_DIFFERENCE),
        ((0.0, 0.2), (0.6, 0.8), comparison.NO_DIFFERENCE),  # zero inside: no winner
        ((0.01, 0.2), (0.45, 0.8), f"{comparison.NETWORK_AHEAD}; {comparison.CHANCE}"),
        ((float("nan"),) * 2, (0.6, 0.8), comparison.UNKNOWN),
    ],
)
def test_verdicts(difference, network, said):
    assert comparison.verdict(difference, network, chance=0.5) == said


def test_interval_text():
    assert comparison.interval_text(0.6123, (0.55, 0.671)) == "0.612 [0.55, 0.67]"
    assert comparison.interval_text(0.6, None) == "0.600"
    assert comparison.interval_text(0.6, [None, None]) == "0.600"  # NaN read back from JSON
    assert comparison.interval_text(float("nan"), (0.1, 0.2)) == "n/a"
    assert comparison.interval_text(None, None) == "n/a"
