"""Timing helpers shared by the benches."""

import time
from collections.abc import Callable

import torch


def timed(fn: Callable[[], object], device: torch.device) -> float:
    """Wall seconds of one call of `fn`; on CUDA the device is synchronised before and after it."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def interleaved_times(variants: dict[str, Callable[[], object]], repeats: int,
                      device: torch.device) -> dict[str, list[float]]:
    """Wall seconds of each variant's call, `repeats` times, the variants taken in turn within each repeat.

    Interleaving spreads the machine's noise (other processes, clock changes) over every variant alike,
    so the ratios of their medians stay fair. On CUDA the device is synchronised around every call.
    """
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            times[name].append(timed(fn, device))
    return times


def training_step(trainer, model, batch) -> Callable[[], torch.Tensor]:
    """One optimiser step of `trainer`'s loss on `batch` (AdamW, gradients cleared), as a callable that
    returns the loss it stepped on (detached)."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step():
        loss = trainer.compute_loss(model, batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()
    return step
