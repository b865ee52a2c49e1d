"""CPU threads for inference: a default that is never slower than one thread.

Measured on a shared 2-core VM (docs/benchmarks.md): two OpenMP threads on two cores lose to one
as soon as anything else runs (a 40 ms step is hundreds of small ops, each waiting for the
slower thread), and by far with libgomp's default spinning barrier. So the default is one
thread unless at least two cores are idle, and OpenMP threads sleep rather than spin while they
wait (``OMP_WAIT_POLICY=PASSIVE``, set by ``import spectrostream`` before torch starts OpenMP,
unless the environment already chose; it has no effect if torch was imported first).
"""

from __future__ import annotations

import os

import torch

MAX_DEFAULT_THREADS = 4  # streaming steps stop scaling beyond a few threads
_chosen = False  # an explicit choice (``--threads`` or set_threads(n)) is kept


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def default_threads(cores: int | None = None, load: float | None = None) -> int:
    """1 on machines with at most 2 usable cores or fewer than 2 idle ones (1-minute load
    average); otherwise the idle cores, at most ``MAX_DEFAULT_THREADS``."""
    cores = usable_cores() if cores is None else cores
    load = os.getloadavg()[0] if load is None else load
    idle = int(cores - load)
    if cores <= 2 or idle < 2:
        return 1
    return min(idle, MAX_DEFAULT_THREADS)


def set_threads(threads: int | None = None) -> int:
    """Set torch's intra-op threads: ``threads`` if given (kept for the process), else the
    default, unless OMP_NUM_THREADS or an earlier explicit choice decided. Returns the count."""
    global _chosen
    if threads is not None:
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        _chosen = True
    elif _chosen or os.environ.get("OMP_NUM_THREADS"):
        return torch.get_num_threads()
    else:
        threads = default_threads()
    torch.set_num_threads(threads)
    return threads
