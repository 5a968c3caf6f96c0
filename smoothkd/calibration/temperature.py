"""Temperature scaling: the scalar T minimising the NLL of softmax(logits / T) on held-out tokens."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from smoothkd.calibration.metrics import widen


def fit_temperature(logits: torch.Tensor, targets: torch.Tensor, max_iter: int = 100) -> float:
    """Fit T > 0 by LBFGS on log T (unconstrained, and the NLL is smooth in it) over cached logits."""
    logits = widen(logits)
    targets = targets.to(logits.device)
    log_t = torch.zeros((), dtype=logits.dtype, device=logits.device, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(logits / log_t.exp(), targets)
        loss.backward()
        return loss

    optimizer.step(closure)
    return float(log_t.detach().exp())
