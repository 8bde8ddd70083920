"""What the benchmarks print about the machine they ran on."""

from __future__ import annotations

import platform


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo (Linux), else ``platform.machine()``."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return f"{line.split(':', 1)[1].strip()} ({platform.machine()})"
    except OSError:
        pass
    return platform.processor() or platform.machine()


def best_torch_threads(model, ids, cores: int) -> dict[int, float]:
    """Time one forward pass of ``model`` on ``ids`` with 1..``cores`` torch threads and keep the
    fastest count (on shared cores more OpenMP threads can be slower). Returns seconds by count."""
    import time

    import torch

    best = {}
    for n in range(1, cores + 1):
        torch.set_num_threads(n)
        with torch.inference_mode():
            model(ids)
            t = time.perf_counter()
            model(ids)
            best[n] = time.perf_counter() - t
    torch.set_num_threads(min(best, key=best.get))
    return best
