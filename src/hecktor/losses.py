"""The Cox partial-likelihood loss used for recurrence-free survival (Task 2).

As the paper describes it (after DeepSurv): risks are centred, sorted by time, aggregated by a
cumulative log-sum-exp, and the loss is the negative mean of the observed events' contributions.
Ties are handled exactly by Breslow's rule: the risk set of a patient holds everyone whose time is
greater than or equal to theirs, whatever order the sort left tied patients in. A batch without an
event carries no information for a partial likelihood: its loss is zero (with a gradient of zero),
never NaN.
"""

from __future__ import annotations

import torch


def cox_loss(risk: torch.Tensor, time: torch.Tensor, event: torch.Tensor) -> torch.Tensor:
    """Negative mean Breslow partial log-likelihood of ``risk`` (higher = earlier event).

    Args:
        risk: (N,) predicted log-hazards.
        time: (N,) follow-up times (any unit; only their order matters).
        event: (N,) 1 for an observed event, 0 for censoring.
    """
    risk = risk.float().reshape(-1)
    time = time.reshape(-1).to(risk.device)
    event = event.reshape(-1).to(risk.device).bool()
    if not (risk.numel() == time.numel() == event.numel()):
        raise ValueError(
            f"sizes differ: risk {risk.numel()}, time {time.numel()}, event {event.numel()}"
        )
    if not event.any():
        return risk.sum() * 0.0
    risk = risk - risk.mean()
    order = torch.argsort(time, descending=True, stable=True)
    r, t, e = risk[order], time[order].float(), event[order]
    log_cum = torch.logcumsumexp(r, dim=0)
    # the risk set of position k ends at the last patient whose time is >= t_k (Breslow ties)
    ascending = -t  # ascending, because t is sorted descending
    last = torch.searchsorted(ascending.contiguous(), ascending.contiguous(), right=True) - 1
    return -(r - log_cum[last])[e].mean()
