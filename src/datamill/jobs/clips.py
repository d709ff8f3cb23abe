"""Job `clips`: cut every video of a tree into fixed-length, resized clips.

Items are videos (stage "plan": a worker probes the video by demuxing only and plans clip
tasks aligned on keyframes: one for a video of at most `task_frames` frames, about
frames / (4 x workers) each for a longer one), then clip tasks (stage "cut": a worker seeks to
the task's keyframe, decodes its range and writes its clips; the longest waiting task goes
first).  So one long video is spread over every core, and a rerun redoes only the unfinished
ranges.
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import os
import json
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Iterator

import pyarrow as pa

from ..engine.job import Item
from ..engine.dst import Dst
from ..engine.task import Outcome, TaskRunner, failed
from .tree import TreeJob
from ..media.video import (AUDIO_MODES, CODECS, FORMATS, ClipSpec, ClipTask, VideoError,
                           check_output_size, cut_clips, output_size, plan_clip_tasks,
                           probe_video)
from ..engine.run import RunOptions, RunReport, run_job
from ..options import (OptionError, Options, fingerprint, option, parse_extensions, parse_wxh,
                       split_flat)

log = logging.getLogger("datamill")

VIDEO_EXTENSIONS = ("mp4", "avi", "mov", "mkv", "webm", "m4v")
LAYOUTS = ("mirror", "flat")


@dataclass(frozen=True)
class ClipOptions(Options):
    """Everything a worker needs to cut clips; all but task_frames and extensions change the
    results."""

    frames: int = option(64, "Frames per clip.", min=1)
    stride: int | None = option(None, "Frames between clip starts (default: --frames).", min=1)
    drop_last: bool = option(False, "Drop the last clip when it is shorter.")
    fps: float | None = option(None, "Resample to this frame rate first.", min=0, min_open=True)
    size: tuple[int, int] | None = option(
        None, "Exact output size (odd values are rounded down to even).", parse=parse_wxh,
        metavar="WxH")
    short_side: int | None = option(
        None, "Scale so the short side is N, keeping the aspect ratio.", min=2)
    max_side: int | None = option(None, "Scale down so the long side is at most N.", min=2)
    codec: str = option("h264", "Video codec (copy: cut without re-encoding).", choices=CODECS)
    crf: int | None = option(None, "Quality (lower is better; codec default if unset).",
                             min=0, max=63)
    preset: str | None = option(None, "Encoder speed preset (h264/hevc: ultrafast ... veryslow).")
    format: str = option("mp4", "Video files, folders of JPEG frames, or .npy arrays "
                         "(T x H x W x 3).", choices=FORMATS)
    audio: str = option("drop", "Keep or drop the audio track.", choices=AUDIO_MODES)
    layout: str = option("mirror", "mirror: DST/<dir>/<video>/<video>_0000.mp4; flat: "
                         "DST/<dir__video>_0000.mp4.", choices=LAYOUTS)
    extensions: tuple[str, ...] = option(
        VIDEO_EXTENSIONS, "Video extensions to look for, comma-separated.", flag="--ext",
        parse=parse_extensions, multiple=True, fingerprint=False)
    task_frames: int = option(512, "Frames a cut task decodes (scheduling only).", min=1,
                              cli=False, fingerprint=False)

    def check(self) -> None:
        if sum(x is not None for x in (self.size, self.short_side, self.max_side)) > 1:
            raise OptionError("give at most one of --size, --short-side, --max-side")
        if self.codec == "copy" and (self.format != "mp4" or self.fps or self.resizes):
            raise OptionError("--codec copy does not re-encode: it cannot resize, resample "
                              "--fps or write --format frames/npy")
        # A size the encoder cannot make is refused now, not failed for every video; a
        # --short-side whose long side is too large for a video fails that video alone.
        codec = self.codec if self.format == "mp4" else None
        for flag, value in (("--size", self.size), ("--short-side", self.short_side)):
            if value is None:
                continue
            try:
                w, h, _ = (output_size(*value, size=value) if flag == "--size"
                           else output_size(value, value, short_side=value))
                check_output_size(w, h, codec)
            except (ValueError, TypeError, VideoError) as exc:
                raise OptionError(f"{flag}: {exc}") from exc

    @property
    def resizes(self) -> bool:
        return any(x is not None for x in (self.size, self.short_side, self.max_side))

    def fingerprint(self) -> dict:
        return {**fingerprint(self), "stride": self.stride or self.frames}


def clip_paths(dst: Path, rel: str, opts: ClipOptions) -> tuple[Path, str]:
    """(folder, file stem prefix) of a video's clips: mirrored tree or flat."""
    relp = Path(rel)
    if opts.layout == "flat":
        return dst, "__".join(relp.with_suffix("").parts)
    return dst / relp.parent / relp.stem, relp.stem


def clip_output(folder: Path, prefix: str, index: int, opts: ClipOptions, source_suffix: str) -> str:
    name = f"{prefix}_{index:04d}"
    if opts.format == "frames":
        return str(folder / name)
    if opts.format == "npy":
        return str(folder / f"{name}.npy")
    suffix = source_suffix.lower() if opts.codec == "copy" and source_suffix.lower() in (
        ".mkv", ".webm", ".mov") else ".mp4"
    return str(folder / f"{name}{suffix}")


def clips_worker(opts: ClipOptions, dst: Dst, payload: tuple,
                 threads: int = 0, workers: int | None = None) -> list[dict] | Outcome:
    """Run in a worker: plan a video (for `workers` workers), or cut one task of its clips
    (into DST, or into a local folder uploaded to a URL DST when the task is done)."""
    if payload[0] == "plan":
        return plan_video(opts, payload[1], workers)
    _, path, rel, task, geometry = payload
    with dst.staged() as root:
        folder, prefix = clip_paths(root, rel, opts)
        clip_task = task_from_json(task)
        results = cut_clips(
            path, clip_task,
            out_paths=lambda spec: clip_output(folder, prefix, spec.index, opts, Path(path).suffix),
            size=tuple(geometry["size"]) if geometry["size"] else None, codec=opts.codec,
            crf=opts.crf, preset=opts.preset, fmt=opts.format, audio=opts.audio, threads=threads)
    records = []
    for r in results:
        rec = dataclasses.asdict(r)
        rec["clip_index"] = rec.pop("index")
        rec["reason"] = rec.pop("error_class", None)
        rec["size_note"] = geometry["note"]
        rec["path"] = os.path.relpath(rec["path"], root) if rec.get("path") else None
        records.append(rec)
    bad = [r for r in records if r["status"] == "failed"]
    if bad:  # the task failed; the clips it did write are kept (their records say which)
        return failed(bad[0]["reason"] or "error", "; ".join(
            f"clip {r['clip_index']}: {r.get('message') or r['reason']}" for r in bad[:5]),
            records=records)
    return records


def plan_video(opts: ClipOptions, path: str, workers: int | None = None) -> list[dict]:
    """A video's cut tasks (as JSON): one for a video of at most `task_frames` frames; a longer
    one is cut finer for `workers` workers (see `plan_clip_tasks`)."""
    info = probe_video(path)
    w, h, note = output_size(info.display_width, info.display_height, size=opts.size,
                             short_side=opts.short_side, max_side=opts.max_side)
    check_output_size(w, h, opts.codec)
    size = [w, h] if opts.resizes or note else None
    tasks = plan_clip_tasks(info, frames=opts.frames, stride=opts.stride or opts.frames,
                            drop_last=opts.drop_last, fps=opts.fps, task_frames=opts.task_frames,
                            workers=workers)
    if not tasks:
        raise VideoError(f"{info.frame_count} frames: shorter than one clip of {opts.frames} "
                         "and --drop-last is set", error_class="too_short")
    geometry = {"size": size, "note": note}
    return [{**task_to_json(t), "geometry": geometry} for t in tasks]


def task_to_json(task: ClipTask) -> dict:
    """A ClipTask as JSON (the ledger keeps plans, so a rerun needs no new probe)."""
    return {"clips": [dataclasses.astuple(c) for c in task.clips], "seek_frame": task.seek_frame,
            "seek_pts": task.seek_pts, "start_pts": task.start_pts,
            "fps": str(task.fps) if task.fps is not None else None,
            "keyframes": [list(k) for k in task.keyframes]}


def task_from_json(d: dict) -> ClipTask:
    return ClipTask(clips=tuple(ClipSpec(*c) for c in d["clips"]), seek_frame=d["seek_frame"],
                    seek_pts=d["seek_pts"], start_pts=d["start_pts"],
                    fps=Fraction(d["fps"]) if d["fps"] is not None else None,
                    keyframes=tuple(tuple(k) for k in d["keyframes"]))


class ClipsJob(TreeJob):
    name = "clips"
    kind = "videos"
    final_stage = "cut"
    unit = "video"
    outputs_per_item = True  # a cut task's clips are its own
    manifest_fields = [
        pa.field("clip_index", pa.int32()), pa.field("first_frame", pa.int64()),
        pa.field("frame_count", pa.int32()), pa.field("start_time", pa.float64()),
        pa.field("duration", pa.float64()), pa.field("width", pa.int32()),
        pa.field("height", pa.int32()), pa.field("codec", pa.string()),
        pa.field("bytes", pa.int64()), pa.field("path", pa.string()),
        pa.field("size_note", pa.string()),
    ]

    def __init__(self, src: str | os.PathLike, dst: str | os.PathLike,
                 options: ClipOptions | None = None, extensions: tuple[str, ...] = VIDEO_EXTENSIONS):
        super().__init__(src, dst, options or ClipOptions(), extensions)
        self._warned_sizes: set[str] = set()

    def items(self) -> Iterator[Item]:
        for e in self.files():
            yield self.item_for(e, ("plan", e.path), stage="plan")

    def outputs(self, task_id: int, payloads: list) -> list[str]:
        """The clips a cut task writes (a plan task writes nothing)."""
        paths = []
        for payload in payloads:
            if payload[0] != "cut":
                continue
            _, path, rel, task, _ = payload
            suffix = Path(path).suffix
            folder, prefix = clip_paths(Path(""), rel, self.opts)
            paths += [clip_output(folder, prefix, c[0], self.opts, suffix) for c in task["clips"]]
        return paths

    def runner(self) -> TaskRunner:
        # FFmpeg's own thread count (0) would start several decoder, scaler and encoder threads
        # in every worker: with a worker per core, one thread each spends less CPU per frame.
        return TaskRunner(functools.partial(clips_worker, self.opts, self.dst,
                                            threads=self.cores_per_worker, workers=self.workers))

    costed = True  # the longest cut tasks go first (a long video's tasks end together)

    def cost(self, payload: tuple) -> float:
        """Frames a task decodes: from its keyframe to its last clip's end (a plan: none)."""
        if payload[0] != "cut":
            return 0.0
        task = payload[3]
        return max(c[1] + c[2] for c in task["clips"]) - task["seek_frame"]

    def expand(self, item: Item, records: list[dict]) -> Iterator[Item]:
        for task in records:
            note = task["geometry"]["note"]
            if note and note not in self._warned_sizes:
                self._warned_sizes.add(note)
                log.warning("%s", note)
            first = task["clips"][0][0]
            yield Item(f"{item.key}#{first:05d}", ("cut", item.source, item.key, task,
                                                   task["geometry"]),
                       stage="cut", source=item.source, size=item.size, mtime=item.mtime)

    def summary_lines(self, ledger: Any) -> list[str]:
        videos = readable = 0
        for row in ledger.iter_items("WHERE stage='plan'"):
            videos += 1
            readable += row["status"] == "ok"
        written = failed = 0
        by_video: dict[str, set[str]] = {}
        for row in ledger.iter_items("WHERE stage='cut'"):
            for rec in json.loads(row["records"] or "[]"):
                ok = rec.get("status") == "ok"
                written += ok
                failed += not ok
                by_video.setdefault(row["source"], set()).add("ok" if ok else "failed")
        partial = sum(1 for s in by_video.values() if len(s) == 2)
        lines = [f"clips: {written} written" + (f", {failed} failed" if failed else ""),
                 f"videos: {videos} found, {readable} readable"
                 + (f", {partial} partial (clips after damage failed)" if partial else "")]
        lines += self.walk_lines()
        for note in sorted(self._warned_sizes):
            lines.append(f"size: {note}")
        return lines


def clips(src: str | os.PathLike, dst: str | os.PathLike, **options: Any) -> RunReport:
    """Cut every video under `src` into clips in `dst`.  Takes every option of `datamill clips
    --help` by its name (those of `ClipOptions` and the engine's `RunOptions`: frames, size,
    codec, ..., workers, executor, quiet, overwrite, retry_failed, limit, dry_run, timeout,
    retries), with the same defaults.  Returns the run's `RunReport`.

    >>> report = datamill.clips("videos/", "clips/", frames=64, size=(565, 320))  # doctest: +SKIP
    >>> report.counts
    {'ok': 42, 'filtered': 0, 'failed': 1}
    """
    opts, run = split_flat([ClipOptions, RunOptions], options)
    return run_job(ClipsJob(src, dst, opts, opts.extensions), run)
