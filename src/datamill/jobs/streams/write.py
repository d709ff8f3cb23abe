"""`datamill streams SRC... DST` / `datamill.write_streams`: the aligned windows of recorded
multi-camera files written as a dataset, one sample per window.

DST/000012/ holds `<source>.npy` (F, H, W, 3) uint8 (or `<source>.mp4`, H.264, with
`--format mp4`) for each source, `mask.npy` (S, F) bool
and `pts.npy` (S, F) float64; a manifest row per window (start, frames, real frames, the
sources without any).  Windows are the job's items, keyed by their index: a rerun decodes
the sources again and writes only the windows not written yet.  Everything runs on this
machine (the sources share its memory): `--executor ray` is refused.
"""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import pyarrow as pa

from ...atomic import rename_noreplace, temp_path_for
from ...engine.job import Item, Job
from ...engine.run import RunOptions, RunReport, run_job
from ...engine.task import TaskRunner, ok
from ...errors import UsageError
from ...options import Options, option, parse_wxh, split_flat
from .stream import ALIGN, ON_MISSING, stream_rate, streams


@dataclass(frozen=True)
class StreamsOptions(Options):
    window: float = option(1.0, "Seconds per window (one sample).", min=0, min_open=True)
    fps: float | None = option(None, "Frames per second of the windows (default: the sources' "
                               "common rate; required when they differ).", min=0, min_open=True)
    size: tuple[int, int] = option((640, 360), "Frame size WIDTHxHEIGHT (even).",
                                   parse=parse_wxh, metavar="WxH")
    align: str = option("pts", "pts: each source's timestamps from its start; arrival: when "
                        "frames arrive.", choices=ALIGN)
    on_missing: str = option("repeat", "A missing frame repeats the last one, is black, or "
                             "drops the window.", choices=ON_MISSING)
    stall_timeout: float = option(2.0, "Seconds a source may give nothing before it is marked "
                                  "stalled.", min=0, min_open=True, fingerprint=False)
    output_format: str = option("npy", "npy: <window>/<source>.npy (frames, H, W, 3) uint8; "
                                "mp4: <window>/<source>.mp4 (H.264).", name="format",
                                choices=("npy", "mp4"))


def source_names(sources: Sequence[str]) -> list[str]:
    """A name per source for its file in each window: the file's stem, made unique."""
    names: list[str] = []
    for s in sources:
        base = "".join(c if c.isalnum() or c in "-_" else "_" for c in Path(s).stem) or "source"
        name, n = base, 1
        while name in names:
            n += 1
            name = f"{base}_{n}"
        names.append(name)
    return names


def write_window(root: str, names: list[str], fmt: str, fps: float, payload: tuple) -> Any:
    """Write one window's folder (under a temporary name, renamed into place)."""
    from ...media.video.stream import write_mp4
    window, start, frames, mask, pts = payload
    final = Path(root) / f"{window:06d}"
    tmp = temp_path_for(final)
    tmp.mkdir(parents=True)
    try:
        for name, f in zip(names, frames):
            if fmt == "mp4":
                write_mp4(str(tmp / f"{name}.mp4"), f, fps)
            else:
                np.save(tmp / f"{name}.npy", f)
        np.save(tmp / "mask.npy", mask)
        np.save(tmp / "pts.npy", pts)
        rename_noreplace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    missing = [n for n, m in zip(names, mask) if not m.any()]
    return ok([{"window": window, "start": start, "frames": int(mask.shape[1]),
                "real": int(mask.sum()), "missing_sources": ",".join(missing) or None}])


class StreamsJob(Job):
    name = "streams"
    unit = "window"
    outputs_per_item = True
    executors = ("serial",)  # the windows come from this process's decoders
    manifest_fields = [pa.field("window", pa.int64()), pa.field("start", pa.float64()),
                       pa.field("frames", pa.int64()), pa.field("real", pa.int64()),
                       pa.field("missing_sources", pa.string())]

    def __init__(self, sources: Sequence[str], dst: str | os.PathLike,
                 options: StreamsOptions | None = None):
        self.sources = [str(s) for s in sources]
        super().__init__(self.sources[0] if self.sources else ".", dst)
        self.opts = options or StreamsOptions()
        self.names = source_names(self.sources)
        self.last_stats: list[dict] = []
        self.fps = self.opts.fps  # the sources' common rate when not given (validate)

    def validate(self) -> None:
        self.opts.validate()
        if not self.sources:
            raise UsageError("streams: give at least one source")
        for s in self.sources:
            if "://" not in s and not Path(s).exists():
                raise UsageError(f"streams: no such source {s}")
        self.fps = stream_rate(self.sources, self.opts.fps)
        self.validate_dst()

    def source_gone(self) -> bool:
        return False

    def fingerprint(self) -> dict:
        return {**self.opts.fingerprint(), "sources": self.sources}

    def items(self) -> Iterator[Item]:
        o = self.opts
        with streams(self.sources, window=o.window, fps=o.fps, size=o.size, align=o.align,
                     on_missing=o.on_missing, stall_timeout=o.stall_timeout) as stream:
            for batch in stream:
                c = batch.copy()
                self.last_stats = c["stats"]
                key = f"{batch.window:06d}"
                yield Item(key, (batch.window, batch.start, c["frames"], c["mask"], c["pts"]))

    def outputs(self, task_id: int, payloads: list) -> list[str]:
        return [f"{p[0]:06d}" for p in payloads]

    def runner(self) -> TaskRunner:
        import functools
        return TaskRunner(functools.partial(write_window, str(self.dst.path), self.names,
                                            self.opts.output_format, self.fps))

    def summary_lines(self, ledger: Any) -> list[str]:
        lines = []
        for name, st in zip(self.names, self.last_stats):
            state = f"failed: {st['failed']}" if st.get("failed") else "ok"
            lines.append(f"{name}: decoded {st['decoded']}, dropped {st['dropped']}, duplicated "
                         f"{st['duplicated']}, missing {st['missing']}, late {st['late']}, "
                         f"stalled {st['stalled']} windows ({state})")
        return lines


def write_streams(sources: Sequence[str], dst: str | os.PathLike, **options: Any) -> RunReport:
    """Write the aligned windows of `sources` into `dst` (see `datamill streams --help`);
    takes the options of `datamill.streams` that apply (window, fps, size, align, on_missing,
    stall_timeout) and the engine's (limit, overwrite, quiet, ...)."""
    if isinstance(options.get("size"), str):
        options["size"] = parse_wxh(options["size"])
    opts, run = split_flat([StreamsOptions, RunOptions], options)
    return run_job(StreamsJob(sources, dst, opts), run)
