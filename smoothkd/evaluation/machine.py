"""The machine a result was measured on: torch on CPU rounds differently per SIMD kernel set and thread
count, and a small model trained near a learning edge turns that rounding into a different model."""

from __future__ import annotations

import platform
from dataclasses import dataclass
from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")


@dataclass(frozen=True)
class Machine:
    """What decides torch's CPU arithmetic: its SIMD capability, version and intra-op threads."""

    cpu_capability: str
    torch: str
    threads: int
    cpu_model: str
    platform: str


def cpu_model(cpuinfo: Path = CPUINFO) -> str:
    """The first `model name` of `cpuinfo` (Linux), else what `platform` knows, else "unknown"."""
    try:
        lines = cpuinfo.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        lines = []
    for line in lines:
        key, _, value = line.partition(":")
        if key.strip() == "model name" and value.strip():
            return value.strip()
    return platform.processor() or "unknown"


def machine(threads: int | None = None) -> Machine:
    """This process's machine record (for sweep.json), with `threads` the intra-op threads the models
    trained with (default: this process's)."""
    import torch

    return Machine(cpu_capability=torch.backends.cpu.get_cpu_capability(), torch=torch.__version__,
                   threads=threads or torch.get_num_threads(), cpu_model=cpu_model(),
                   platform=platform.platform())
