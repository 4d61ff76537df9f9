"""Pick the compute device for deep models: GPU when present, unless the config forces CPU."""
from __future__ import annotations

import os
import sys

__all__ = ["torch_device", "DEVICES", "cpu_threads", "share_cpus", "THREAD_VARS"]

#: environment variable with the CPU threads one worker process may use (set when n_workers > 1)
THREADS_ENV = "OPSEF_THREADS"

DEVICES = ("auto", "cpu", "cuda")

#: variables that cap the threads of one process (ours, OpenMP, MKL, OpenBLAS, numba)
THREAD_VARS = (THREADS_ENV, "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS")


def torch_device(device: str = "auto") -> str:
    """``"cuda"`` when asked for or when ``auto`` finds a CUDA GPU, else ``"cpu"``."""
    if device == "cpu":
        return "cpu"
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device=cuda was requested but torch sees no CUDA GPU; use device=auto or cpu")
    return "cuda" if torch.cuda.is_available() else "cpu"


def cpu_threads() -> int:
    """Threads a model may use in this process: the worker's share of the cores, or 0 (library default)."""
    try:
        return max(0, int(os.environ.get(THREADS_ENV, "0")))
    except ValueError:
        return 0


def share_cpus(n_workers: int) -> int:
    """Split the cores between ``n_workers`` processes (before starting them); return threads per worker.

    Libraries default to one thread per core in *every* process, so N
    workers would each start as many threads as there are cores and slow
    each other down. Child processes inherit the variables; in this process
    the models created afterwards and torch follow them too.
    """
    threads = max(1, (os.cpu_count() or 1) // max(1, n_workers))
    for var in THREAD_VARS:
        os.environ[var] = str(threads)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)
    return threads
