"""Figures of the machine hetagent runs on (the catalog's `host-cpu`), measured, not looked up.

The catalog cannot know this machine, so its `host-cpu` row is empty and the first plan that
needs it measures: a float32 matrix multiply (FLOP/s), a large array copy (memory bandwidth),
the cores and the memory. The result is cached (HETAGENT_HOST_PROBE names the file, default
~/.cache/hetagent/host-probe.json) because measuring takes about a second.
"""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

HOST_DEVICE = "host-cpu"


@dataclass(frozen=True)
class HostFigures:
    flops: float  # float32 matrix-multiply rate reached, FLOP/s
    memory_bandwidth: float  # bytes/s of a large copy (read + write)
    memory_bytes: float
    cores: int
    machine: str


def _cache_path() -> Path:
    default = Path.home() / ".cache" / "hetagent" / "host-probe.json"
    return Path(os.environ.get("HETAGENT_HOST_PROBE", default))


def _machine() -> str:
    return f"{platform.node()}|{platform.processor() or platform.machine()}|{os.cpu_count()}"


def measure(repeats: int = 3) -> HostFigures:
    """Best of `repeats` runs of each measurement (the machine may be busy)."""
    size = 1024
    a = np.random.default_rng(0).random((size, size), dtype=np.float32)
    matmul = min(_timed(lambda: a @ a) for _ in range(repeats))
    source = np.ones(64 * 2**20 // 8)  # 64 MiB of float64: well beyond the caches
    target = np.empty_like(source)
    copy = min(_timed(lambda: np.copyto(target, source)) for _ in range(repeats))
    return HostFigures(
        flops=2 * size**3 / matmul,
        memory_bandwidth=2 * source.nbytes / copy,
        memory_bytes=float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")),
        cores=os.cpu_count() or 1,
        machine=_machine(),
    )


def _timed(work) -> float:
    start = time.perf_counter()
    work()
    return time.perf_counter() - start


def host_figures() -> HostFigures:
    """The cached figures of this machine, measured once."""
    path = _cache_path()
    try:
        cached = HostFigures(**json.loads(path.read_text()))
        if cached.machine == _machine():
            return cached
    except (OSError, ValueError, TypeError):
        pass  # no cache yet, or one from another machine or version: measure
    figures = measure()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(vars(figures), indent=2))
    except OSError:
        pass  # a read-only home only costs the next plan another measurement
    return figures
