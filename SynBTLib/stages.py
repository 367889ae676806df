"""Wall time per named stage of a synthesis, for benchmarks (no effect when nobody records).

``with stage("encode"): ...`` adds the block's wall time to the recorder that ``recording()``
made active in this thread; without one it only costs a lookup.
"""
from __future__ import annotations

import threading
import time
from collections import defaultdict
from contextlib import contextmanager

_active = threading.local()


@contextmanager
def recording():
    """Make a {stage: seconds} dict the active recorder for the block; yields it."""
    previous = getattr(_active, "times", None)
    _active.times = times = defaultdict(float)
    try:
        yield times
    finally:
        _active.times = previous


@contextmanager
def stage(name: str):
    times = getattr(_active, "times", None)
    if times is None:
        yield
        return
    start = time.perf_counter()
    try:
        yield
    finally:
        times[name] += time.perf_counter() - start
