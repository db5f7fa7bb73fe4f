"""cox_loss against an independent computation, edge cases, and lifelines on real data."""

import numpy as np
import pytest
import torch
from scipy.optimize import minimize

from hecktor.losses import cox_loss


def breslow_nll(risk: np.ndarray, time: np.ndarray, event: np.ndarray) -> float:
    """Independent, naive Breslow negative log partial likelihood, averaged over events."""
    total = 0.0
    for i in np.nonzero(event)[0]:
        at_risk = time >= time[i]
        total += risk[i] - np.log(np.exp(risk[at_risk]).sum())
    return -total / event.sum()


@pytest.mark.parametrize("seed", range(5))
def test_matches_independent_computation_with_ties(seed):
    rng = np.random.default_rng(seed)
    n = 40
    time = rng.integers(1, 8, n).astype(float)  # many ties
    event = (rng.random(n) < 0.7).astype(float)
    event[0] = 1
    risk = rng.normal(size=n)
    ours = cox_loss(torch.tensor(risk), torch.tensor(time), torch.tensor(event)).item()
    assert ours == pytest.approx(breslow_nll(risk - risk.mean(), time, event), rel=1e-6)


def test_tie_order_does_not_matter():
    time = torch.tensor([3.0, 1.0, 3.0, 2.0, 3.0])
    event = torch.tensor([1.0, 1.0, 0.0, 1.0, 1.0])
    risk = torch.tensor([0.3, -1.0, 2.0, 0.5, -0.2])
    base = cox_loss(risk, time, event)
    for perm in ([2, 0, 4, 1, 3], [4, 2, 0, 3, 1]):
        assert cox_loss(risk[perm], time[perm], event[perm]).item() == pytest.approx(
            base.item(), rel=1e-6
        )


def test_batch_without_events_is_zero_not_nan():
    risk = torch.randn(6, requires_grad=True)
    loss = cox_loss(risk, torch.arange(6.0), torch.zeros(6))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(risk.grad, torch.zeros(6))


def test_shift_invariance():
    rng = np.random.default_rng(0)
    risk = torch.tensor(rng.normal(size=20))
    time = torch.tensor(rng.exponential(size=20))
    event = torch.tensor((rng.random(20) < 0.6).astype(float))
    a = cox_loss(risk, time, event).item()
    assert cox_loss(risk + 7.5, time, event).item() == pytest.approx(a, rel=1e-6)


def test_better_ordering_has_lower_loss():
    time = torch.tensor([1.0, 2.0, 3.0, 4.0])
    event = torch.ones(4)
    right = cox_loss(torch.tensor([3.0, 2.0, 1.0, 0.0]), time, event)
    wrong = cox_loss(torch.tensor([0.0, 1.0, 2.0, 3.0]), time, event)
    assert right < wrong


def _larynx():
    from lifelines.datasets import load_larynx

    data = load_larynx()
    covariates = ["age", "Stage_II", "Stage_III", "Stage_IV"]
    x = data[covariates].to_numpy(float)
    x[:, 0] = (x[:, 0] - x[:, 0].mean()) / x[:, 0].std()
    return data, covariates, x, data["time"].to_numpy(float), data["death"].to_numpy(float)


def test_linear_model_trained_with_cox_loss_matches_lifelines_on_larynx():
    from lifelines import CoxPHFitter

    data, covariates, x, time, event = _larynx()
    beta = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    xt, tt, et = torch.tensor(x), torch.tensor(time), torch.tensor(event)
    optimiser = torch.optim.LBFGS(
        [beta], lr=0.5, max_iter=500, tolerance_grad=1e-10, line_search_fn="strong_wolfe"
    )

    def closure():
        optimiser.zero_grad()
        loss = cox_loss(xt @ beta, tt, et)
        loss.backward()
        return loss

    optimiser.step(closure)
    ours = beta.detach().numpy()

    # exact Breslow maximum likelihood, computed independently
    exact = minimize(
        lambda b: breslow_nll(x @ b, time, event), np.zeros(x.shape[1]), method="BFGS"
    ).x
    np.testing.assert_allclose(ours, exact, atol=2e-3)

    # lifelines (Efron's tie handling, so close rather than equal)
    frame = data[["time", "death"]].copy()
    frame[covariates] = x
    fitted = (
        CoxPHFitter()
        .fit(frame, duration_col="time", event_col="death")
        .params_[covariates]
        .to_numpy()
    )
    np.testing.assert_allclose(ours, fitted, atol=0.06)


def test_unequal_sizes_are_named():
    with pytest.raises(ValueError, match="sizes differ: risk 2, time 3, event 3"):
        cox_loss(torch.zeros(2), torch.ones(3), torch.ones(3))
