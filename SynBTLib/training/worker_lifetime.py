"""DataLoader worker processes that end with their parent (no orphans after a killed training run)."""
from __future__ import annotations

import os
import sys


def die_with_parent(parent_pid: int | None = None) -> None:
    """Make this (DataLoader worker) process end when its parent does, even by SIGKILL.

    On Linux the kernel sends SIGKILL to this process when the parent thread that forked it
    exits (prctl PR_SET_PDEATHSIG); a parent that died before this call is caught by comparing
    the parent pid. Elsewhere torch's own worker watchdog (a periodic parent check) remains.
    """
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        PR_SET_PDEATHSIG = 1
        try:
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        except (OSError, AttributeError):  # no prctl in this libc: keep torch's watchdog only
            pass
    if parent_pid is not None and os.getppid() != parent_pid:
        os._exit(1)
