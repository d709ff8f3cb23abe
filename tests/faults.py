"""Item functions that fail in each way an executor must survive, shared by the local and the
Ray executor tests (tests/test_ray.py sends this module to Ray's workers by value)."""
from __future__ import annotations

import os
import signal
import time


def ten_div(x):
    """10 // x: ZeroDivisionError for 0, TypeError for a string."""
    return 10 // x


def kill_on_7(x):
    """Kills its own worker process on 7."""
    if x == 7:
        os.kill(os.getpid(), signal.SIGKILL)
    return x * 2


def hang_on_3(x):
    """Sleeps an hour on 3 (a deadline must cut it)."""
    if x == 3:
        time.sleep(3600)
    return x
