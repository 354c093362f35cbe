"""How many threads the model may use in the widget's worker (no Qt; torch only where it is loaded already).

napari draws on the GUI thread while the model runs in a worker. When torch's intra-op pool takes every core,
the two fight: ``Predictor.add_click`` took 80 ms with 1 torch thread and 0.6-1.4 s with 2 on a 2-core
machine with napari drawing. So the worker pins torch to one core fewer than the process may use, unless
``SAMMOE_NAPARI_THREADS`` (or the widget's "threads" box) says otherwise.
"""

from __future__ import annotations

import os
import sys

ENV = "SAMMOE_NAPARI_THREADS"


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity, which containers and taskset narrow)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def default_threads() -> int:
    """``SAMMOE_NAPARI_THREADS`` when it is a whole number >= 1, else one core fewer than available."""
    raw = os.environ.get(ENV, "").strip()
    if raw.isdigit() and int(raw) >= 1:
        return int(raw)
    return max(1, available_cores() - 1)


def pin(threads: int, *, load: bool = False) -> int | None:
    """Set torch's intra-op threads (call it in the worker thread, before a model call): the setting is
    process-wide, and a worker thread's OpenMP team reads it when the thread first runs a parallel op.
    Without ``load`` it does nothing while torch is not loaded (a job that needs no model must not import it).
    Returns the threads torch uses, or None."""
    if load:
        import torch  # noqa: F401  (the worker loads it: never napari's GUI thread)
    torch = sys.modules.get("torch")
    if torch is None:
        return None
    threads = max(1, int(threads))
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return torch.get_num_threads()
