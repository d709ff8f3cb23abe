"""Job `dedup`: find exact and near-duplicate images across a whole collection (see job.py)."""
from __future__ import annotations

import os
from typing import Any

from ...engine.run import RunOptions, RunReport, run_job
from ...options import split_flat
from .job import IMAGE_EXTENSIONS, DedupJob, DedupOptions

__all__ = ["dedup", "DedupJob", "DedupOptions", "IMAGE_EXTENSIONS"]


def dedup(src: str | os.PathLike, dst: str | os.PathLike, **options: Any) -> RunReport:
    """Find exact and near-duplicate images under `src`; results, report and ledger in `dst`.
    Takes every option of `datamill dedup --help` by its name (hash, threshold, keep, action,
    move_to, report (None: no report), ..., workers, quiet, ...), with the same defaults.

    >>> report = datamill.dedup("photos/", "dedup-out/", threshold=8, action="report")  # doctest: +SKIP
    """
    opts, run = split_flat([DedupOptions, RunOptions], options)
    return run_job(DedupJob(src, dst, opts, opts.extensions), run)
