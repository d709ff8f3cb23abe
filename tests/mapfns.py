"""Functions for the `map` job's tests (given as --fn tests/mapfns.py:NAME, or imported)."""
from __future__ import annotations

import os
import signal
import time

import numpy as np


def _n(item):
    return int(item["n"]) if isinstance(item, dict) else int(item)


def record(item):
    """One record: a 64-float array, a 2-D uint8 array, a string, an int."""
    n = _n(item)
    return {"vec": np.full(64, n, np.float32), "img": np.full((4, 3), n % 256, np.uint8),
            "text": f"item {n}", "n": n}


def several(item):
    """n % 4 records (none for multiples of 4: filtered as empty)."""
    n = _n(item)
    for k in range(n % 4):
        yield {"n": n, "k": k}


def half_way(item):
    """Raises after two records on multiples of 5: none of its records may be kept."""
    n = _n(item)
    yield {"n": n, "k": 0}
    yield {"n": n, "k": 1}
    if n % 5 == 0:
        raise ValueError(f"half way through {n}")
    yield {"n": n, "k": 2}


def bad(item):
    """Every way an item can fail, by n % 10: raise, wrong return, unsupported type, a type
    change, an object array; others are fine."""
    n = _n(item)
    kind = n % 10
    if kind == 1:
        raise RuntimeError(f"no luck with {n}")
    if kind == 2:
        return [1, 2]  # not dicts
    if kind == 3:
        return {"n": n, "text": {1, 2}}  # a set: unsupported
    if kind == 4 and n > 20:
        return {"n": float(n), "text": "x"}  # n changes type
    if kind == 5:
        return {"n": n, "text": "x", "extra": 1}  # a new field
    if kind == 6:
        return {"n": n, "text": np.array([object()], dtype=object)}
    return {"n": n, "text": f"item {n}"}


def kill_on_13(item):
    n = _n(item)
    if n == 13:
        os.kill(os.getpid(), signal.SIGKILL)
    return {"n": n}


def hang_on_7(item):
    n = _n(item)
    if n == 7:
        time.sleep(3600)
    return {"n": n}


def fail_if_flag(item):
    """Fails items divisible by 3 while the file named by $MAPFNS_FLAG exists."""
    n = _n(item)
    if n % 3 == 0 and os.path.exists(os.environ.get("MAPFNS_FLAG", "/nonexistent")):
        raise RuntimeError("flag is up")
    return {"n": n, "text": f"item {n}"}


def with_state(item, state):
    return {"n": _n(item), "pid": state["pid"], "model": state["model"]}


def load_model():
    return {"pid": os.getpid(), "model": "loaded once"}


def path_size(path):
    """A folder SRC gives paths."""
    with open(path, "rb") as f:
        data = f.read()
    return {"name": os.path.basename(path), "size": len(data), "data": data}


def slow(item):
    time.sleep(0.01)
    return {"n": _n(item)}
