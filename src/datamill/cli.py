"""The command line: parse arguments into a job's options and hand them to the engine.

The process starts in __main__.py (`run`), which turns Ctrl-C and click's errors into exit
statuses; the commands here exit with the engine's status.
"""
from __future__ import annotations

import functools
import sys
from typing import Any, Callable

import click

from . import __version__
from .engine.errors import UsageError
from .engine.executors import EXECUTORS
from .engine.job import Job
from .engine.run import EXIT_USAGE, RunOptions, run_job


def engine_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The options every job takes (scheduling only: none of them needs --overwrite)."""
    opts = [
        click.option("--workers", type=click.IntRange(min=1), help="Worker processes (default: one per core)."),
        click.option("--executor", type=click.Choice(EXECUTORS), default="local", show_default=True,
                     help="serial: in this process (for pdb); local: worker processes; ray: a Ray cluster."),
        click.option("--ray-address", help="Ray cluster address for --executor ray (auto, ray://host:port)."),
        click.option("--cpus-per-task", type=click.FloatRange(min=0, min_open=True),
                     help="CPUs Ray reserves for each task (--executor ray; default 1)."),
        click.option("--state-dir", type=click.Path(file_okay=False),
                     help="Local folder of the job's ledger (default: DST/_datamill, or for a URL "
                          "DST a folder under ~/.cache/datamill named after it)."),
        click.option("--quiet", "-q", is_flag=True, help="No progress and no summary."),
        click.option("--overwrite", is_flag=True, help="Remove every output the ledger says datamill wrote, then redo everything (also with other options)."),
        click.option("--allow-existing", is_flag=True,
                     help="Write into a non-empty DST that is not a datamill folder; its files are never touched."),
        click.option("--break-lock", is_flag=True,
                     help="Take over DST's lock held by a run on another host (only if no run there is alive)."),
        click.option("--retry-failed", is_flag=False, flag_value="all", default=None, metavar="[CLASSES]",
                     help="Retry items that failed before (all, or only these comma-separated error classes)."),
        click.option("--limit", type=click.IntRange(min=0), help="Only the first N items."),
        click.option("--dry-run", is_flag=True, help="Say what would be done; do nothing."),
        click.option("--timeout", type=click.FloatRange(min=0, min_open=True),
                     help="Seconds one item may take before it is killed."),
        click.option("--retries", type=click.IntRange(min=0), default=1, show_default=True,
                     help="Further attempts for an item that failed in a way that may pass."),
    ]
    return functools.reduce(lambda f, o: o(f), reversed(opts), fn)


def run_options(kw: dict[str, Any]) -> RunOptions:
    """Take the engine options out of a command's keyword arguments."""
    retry = kw.pop("retry_failed")
    return RunOptions(
        workers=kw.pop("workers"), executor=kw.pop("executor"),
        executor_options={"address": kw.pop("ray_address"),
                          "cpus_per_task": kw.pop("cpus_per_task")}, state_dir=kw.pop("state_dir"),
        quiet=kw.pop("quiet"), overwrite=kw.pop("overwrite"), limit=kw.pop("limit"),
        allow_existing=kw.pop("allow_existing"), break_lock=kw.pop("break_lock"),
        dry_run=kw.pop("dry_run"), timeout=kw.pop("timeout"), retries=kw.pop("retries"),
        retry_failed=(True if retry == "all" else set(retry.split(","))) if retry else False,
        argv=sys.argv)


def execute(make_job: Callable[[], Job], opts: RunOptions) -> None:
    """Build the job and run it; exit with the engine's status (0, 1, 2 or 130).  A Ctrl-C
    that the engine does not handle itself reaches __main__.run as KeyboardInterrupt."""
    try:
        report = run_job(make_job(), opts)
    except (UsageError, ValueError) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_USAGE)
    sys.exit(report.exit_code)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="datamill")
def main() -> None:
    """Turn raw media collections into training-ready datasets on every core.

    Every job is `datamill JOB SRC DST [options]`; running the same command again resumes.
    """


@main.command()
@click.argument("dst", type=click.Path())
@click.option("--state-dir", type=click.Path(file_okay=False),
              help="The ledger's folder, if the job was run with --state-dir.")
def status(dst: str, state_dir: str | None) -> None:
    """Summarise a job folder or URL (counts, failures, options, runs) without running anything."""
    from .engine.status import describe
    try:
        click.echo(describe(dst, state_dir))
    except UsageError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_USAGE)


def _size(ctx: Any, param: Any, value: str | None) -> tuple[int, int] | None:
    if value is None:
        return None
    try:
        w, h = (int(x) for x in value.lower().split("x"))
    except ValueError:
        raise click.BadParameter(f"expected WIDTHxHEIGHT like 565x320, not {value!r}")
    return w, h


def _extensions(ctx: Any, param: Any, value: tuple[str, ...]) -> tuple[str, ...] | None:
    exts = tuple(e.strip().lstrip(".").lower() for v in value for e in v.split(",") if e.strip())
    return exts or None


@main.command()
@click.argument("src", type=click.Path())
@click.argument("dst", type=click.Path())
@click.option("--frames", type=click.IntRange(min=1), default=64, show_default=True, help="Frames per clip.")
@click.option("--stride", type=click.IntRange(min=1), help="Frames between clip starts (default: --frames).")
@click.option("--drop-last", is_flag=True, help="Drop the last clip when it is shorter.")
@click.option("--fps", type=click.FloatRange(min=0, min_open=True), help="Resample to this frame rate first.")
@click.option("--size", callback=_size, metavar="WxH", help="Exact output size (odd values are rounded down to even).")
@click.option("--short-side", type=click.IntRange(min=2), help="Scale so the short side is N, keeping the aspect ratio.")
@click.option("--max-side", type=click.IntRange(min=2), help="Scale down so the long side is at most N.")
@click.option("--codec", type=click.Choice(["h264", "hevc", "vp9", "av1", "mpeg4", "copy"]), default="h264", show_default=True)
@click.option("--crf", type=click.IntRange(min=0, max=63), help="Quality (lower is better; codec default if unset).")
@click.option("--preset", help="Encoder speed preset (h264/hevc: ultrafast ... veryslow).")
@click.option("--format", "fmt", type=click.Choice(["mp4", "frames", "npy"]), default="mp4", show_default=True,
              help="Video files, folders of JPEG frames, or .npy arrays (T x H x W x 3).")
@click.option("--audio", type=click.Choice(["drop", "keep"]), default="drop", show_default=True)
@click.option("--layout", type=click.Choice(["mirror", "flat"]), default="mirror", show_default=True,
              help="mirror: DST/<dir>/<video>/<video>_0000.mp4; flat: DST/<dir__video>_0000.mp4.")
@click.option("--ext", "extensions", multiple=True, callback=_extensions,
              help="Video extensions to look for, comma-separated (default: mp4,avi,mov,mkv,webm,m4v).")
@engine_options
def clips(src: str, dst: str, **kw: Any) -> None:
    """Cut every video under SRC into fixed-length, resized clips in DST (mirroring SRC)."""
    from .jobs.clips import VIDEO_EXTENSIONS, ClipOptions, ClipsJob
    opts = run_options(kw)
    clip_opts = ClipOptions(frames=kw["frames"], stride=kw["stride"], drop_last=kw["drop_last"],
                            fps=kw["fps"], size=kw["size"], short_side=kw["short_side"],
                            max_side=kw["max_side"], codec=kw["codec"], crf=kw["crf"],
                            preset=kw["preset"], format=kw["fmt"], audio=kw["audio"],
                            layout=kw["layout"])
    execute(lambda: ClipsJob(src, dst, clip_opts, kw["extensions"] or VIDEO_EXTENSIONS), opts)


def _columns(ctx: Any, param: Any, value: str | None) -> tuple[str, ...]:
    return tuple(c.strip() for c in (value or "").split(",") if c.strip())


@main.command()
@click.argument("urls", type=click.Path())
@click.argument("dst", type=click.Path())
@click.option("--url-col", default="url", show_default=True, help="Column of the URL (csv, tsv, jsonl, parquet).")
@click.option("--caption-col", help="Column of the caption, stored as <key>.txt.")
@click.option("--keep-cols", callback=_columns, help="Other columns to keep in the metadata, comma-separated.")
@click.option("--input-format", type=click.Choice(["txt", "csv", "tsv", "jsonl", "parquet"]),
              help="Input format (default: from the file name; .gz is read as such).")
@click.option("--format", "fmt", type=click.Choice(["files", "webdataset", "parquet"]), default="files", show_default=True,
              help="files: 00000/000000123.jpg + .json; webdataset: 00000.tar; parquet: 00000.parquet.")
@click.option("--shard-size", type=click.IntRange(min=1), default=10_000, show_default=True, help="URLs per shard.")
@click.option("--concurrency", type=click.IntRange(min=1), default=256, show_default=True, help="Connections per worker.")
@click.option("--per-host", type=click.IntRange(min=1), default=16, show_default=True, help="Connections per host per worker.")
@click.option("--max-bytes", type=click.IntRange(min=1), default=20_000_000, show_default=True, help="Largest body accepted.")
@click.option("--user-agent", help="User-Agent header.")
@click.option("--no-robots", is_flag=True, help="Do not honour X-Robots-Tag: noai / noimageai.")
@click.option("--resize", type=click.IntRange(min=1), help="Target side in pixels (downscale only unless --upscale).")
@click.option("--resize-mode", type=click.Choice(["no", "keep_ratio", "center_crop", "border"]), default="keep_ratio",
              show_default=True, help="keep_ratio: short side = N; center_crop: N x N centre; border: fit in N x N, padded.")
@click.option("--upscale", is_flag=True, help="Also enlarge images smaller than --resize.")
@click.option("--encode", type=click.Choice(["jpg", "webp", "png"]), default="jpg", show_default=True)
@click.option("--quality", type=click.IntRange(0, 100), default=95, show_default=True)
@click.option("--min-size", type=click.IntRange(min=1), help="Filter images whose short side is smaller (too_small).")
@click.option("--max-aspect", type=click.FloatRange(min=1), help="Filter images more elongated than this (too_large_aspect).")
@click.option("--max-pixels", type=click.IntRange(min=1), default=89_478_485, show_default=True,
              help="Fail larger images (decompression bombs) as too_large.")
@engine_options
def download(urls: str, dst: str, **kw: Any) -> None:
    """Download the images of a URL list URLS (txt, csv, tsv, jsonl, parquet, .gz) into DST.

    --timeout is a total deadline per URL (connect and every read), default 10 s; --retries
    retries connection errors, timeouts, 5xx and 429 (Retry-After honoured).
    """
    from .io.http import DEFAULT_USER_AGENT, FetchOptions
    from .jobs.download import DownloadJob, DownloadOptions
    from .media.image import ImageOptions
    opts = run_options(kw)
    fetch = FetchOptions(timeout=opts.timeout or 10.0, retries=opts.retries,
                         concurrency=kw["concurrency"], per_host=kw["per_host"],
                         max_bytes=kw["max_bytes"], user_agent=kw["user_agent"] or DEFAULT_USER_AGENT,
                         honor_robots=not kw["no_robots"])
    opts.timeout, opts.retries = None, 1  # per URL inside the worker; the engine guards tasks
    image = ImageOptions(resize=kw["resize"], resize_mode=kw["resize_mode"], upscale=kw["upscale"],
                         encode=kw["encode"], quality=kw["quality"], min_size=kw["min_size"],
                         max_aspect=kw["max_aspect"], max_pixels=kw["max_pixels"])
    job_opts = DownloadOptions(url_col=kw["url_col"], caption_col=kw["caption_col"],
                               keep_cols=kw["keep_cols"], input_format=kw["input_format"],
                               output_format=kw["fmt"], shard_size=kw["shard_size"],
                               image=image, fetch=fetch)
    execute(lambda: DownloadJob(urls, dst, job_opts), opts)


@main.command()
@click.argument("src", type=click.Path())
@click.argument("dst", type=click.Path())
@click.option("--hash", "hash_kind", type=click.Choice(["phash", "dhash", "ahash", "whash"]), default="phash",
              show_default=True, help="Perceptual hash (phash is bit-for-bit imagehash's).")
@click.option("--fast", is_flag=True, help="Decode JPEGs at reduced scale for hashing (faster; see the README).")
@click.option("--threshold", type=click.IntRange(0, 32), default=6, show_default=True,
              help="Largest Hamming distance between near duplicates (0: exact perceptual match).")
@click.option("--keep", type=click.Choice(["largest", "first", "oldest", "newest"]), default="largest",
              show_default=True, help="Which image of a group is kept.")
@click.option("--action", type=click.Choice(["report", "copy", "hardlink", "symlink", "move-duplicates"]),
              default="report", show_default=True,
              help="report: touch nothing; copy/hardlink/symlink the survivors into DST; move the duplicates to --move-to.")
@click.option("--move-to", type=click.Path(), help="Where --action move-duplicates puts them (mirroring SRC).")
@click.option("--report", "report_path", default="report.html", show_default=True,
              help="HTML report of the groups (relative to DST).")
@click.option("--no-report", is_flag=True, help="Write no HTML report.")
@click.option("--min-size", type=click.IntRange(min=1), help="Filter images whose short side is smaller (too_small).")
@click.option("--min-bytes", type=click.IntRange(min=0), help="Filter files smaller than this (too_small).")
@click.option("--against", type=click.Path(), help="Also drop images that duplicate this reference (a folder or a dedup DST).")
@click.option("--ext", "extensions", multiple=True, callback=_extensions,
              help="Image extensions, comma-separated (default: jpg,jpeg,png,webp,gif,bmp,tif,tiff).")
@engine_options
def dedup(src: str, dst: str, **kw: Any) -> None:
    """Find exact and near-duplicate images under SRC: groups, report and survivors in DST.

    Rerunning after adding images hashes only the new ones; changing --threshold, --keep or
    --action regroups from the stored hashes (no --overwrite needed).
    """
    from .jobs.dedup import IMAGE_EXTENSIONS, DedupJob, DedupOptions
    opts = run_options(kw)
    job_opts = DedupOptions(hash=kw["hash_kind"], fast=kw["fast"], threshold=kw["threshold"],
                            keep=kw["keep"], action=kw["action"], move_to=kw["move_to"],
                            report=None if kw["no_report"] else kw["report_path"],
                            min_size=kw["min_size"], min_bytes=kw["min_bytes"], against=kw["against"])
    execute(lambda: DedupJob(src, dst, job_opts, kw["extensions"] or IMAGE_EXTENSIONS), opts)


@main.command()
@click.argument("folder", type=click.Path(), default="datamill-demo")
@click.option("--workers", type=click.IntRange(min=1))
@click.option("--quiet", "-q", is_flag=True)
def demo(folder: str, workers: int | None, quiet: bool) -> None:
    """Generate a small dataset in FOLDER (default ./datamill-demo) and run every job on it."""
    from .demo import run_demo
    sys.exit(run_demo(folder, workers=workers, quiet=quiet))
