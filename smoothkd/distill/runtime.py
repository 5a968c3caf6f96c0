"""Where this process runs: device, precision and its place in a multi-process world.

The one home of these rules, shared by the trainer, the label precompute, the launcher and the stages'
dispatch (launch N processes, or run in place when already inside a world).
"""

from __future__ import annotations

import contextlib
import gc
import os
from dataclasses import asdict

import torch
import torch.distributed as dist

from smoothkd.config import TrainConfig


def on_cpu(device: str) -> bool:
    """Whether a run on `device` trains on CPU: asked for, or no CUDA device present."""
    return device == "cpu" or not torch.cuda.is_available()


def parallel_trainings(workers: int | None, device: str) -> int:
    """How many models train at once (`sweep.workers`): as set, else one on a GPU (two trainings would
    share its memory) and two on a CPU with two or more cores (more add little on the tiny models)."""
    if workers is not None:
        return workers
    return min(os.cpu_count() or 1, 2) if on_cpu(device) else 1


def release_gpu_cache() -> None:
    """Hand back the GPU memory this process's allocator holds but no tensor uses (e.g. a teacher trained
    or run here), so another process on the same GPU can have it; nothing where CUDA was never used."""
    if torch.cuda.is_initialized():
        gc.collect()  # models no longer referenced, but not yet collected, still hold their tensors
        torch.cuda.empty_cache()


def mixed_precision(cfg: TrainConfig, device: str) -> str:
    """`no`, `bf16` or `fp16`: `auto` is bf16 on a CUDA device that supports it, full precision else."""
    if cfg.mixed_precision != "auto":
        return cfg.mixed_precision
    return "bf16" if not on_cpu(device) and torch.cuda.is_bf16_supported() else "no"


def world_size() -> int:
    """Processes in this run: set by torchrun / accelerate launch, 1 in a plain process."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def main_process_first():
    """A context in which rank 0 runs first and the other ranks after it (a no-op in a plain process)."""
    if world_size() == 1:
        return contextlib.nullcontext()
    from accelerate import PartialState

    return PartialState().main_process_first()


def rank_and_world() -> tuple[int, int]:
    """(rank, world size) of the torch.distributed group this process has joined; (0, 1) outside one.

    Unlike `world_size`, which reads the launcher's environment before any group exists, this asks the
    group itself: the label worker splits shards by it.
    """
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


@contextlib.contextmanager
def intra_op_threads(n: int):
    """torch's intra-op thread count set to `n` inside the block and restored after it."""
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def runtime_record(threads: int) -> dict:
    """What besides the inputs shapes a CPU run's rounding (torch, its SIMD kernels, the thread count,
    the CPU): the sweep's machine record (`smoothkd.evaluation.machine`), for a training record."""
    from smoothkd.evaluation.machine import machine

    return asdict(machine(threads))
