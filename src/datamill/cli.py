"""The command line: parse arguments into a job's options and hand them to the engine."""
from __future__ import annotations

import functools
import sys
from typing import Any, Callable

import click

from . import __version__
from .engine.errors import UsageError
from .engine.executor import EXECUTORS
from .engine.job import Job
from .engine.run import EXIT_INTERRUPTED, EXIT_USAGE, RunOptions, run_job


def engine_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The options every job takes (scheduling only: none of them needs --overwrite)."""
    opts = [
        click.option("--workers", type=click.IntRange(min=1), help="Worker processes (default: one per core)."),
        click.option("--executor", type=click.Choice(EXECUTORS), default="local", show_default=True,
                     help="serial: in this process (for pdb); local: worker processes; ray: a Ray cluster."),
        click.option("--ray-address", help="Ray cluster address for --executor ray (auto, ray://host:port)."),
        click.option("--quiet", "-q", is_flag=True, help="No progress and no summary."),
        click.option("--overwrite", is_flag=True, help="Redo everything when options that change results differ from DST's."),
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
        workers=kw.pop("workers"), executor=kw.pop("executor"), ray_address=kw.pop("ray_address"),
        quiet=kw.pop("quiet"), overwrite=kw.pop("overwrite"), limit=kw.pop("limit"),
        dry_run=kw.pop("dry_run"), timeout=kw.pop("timeout"), retries=kw.pop("retries"),
        retry_failed=(True if retry == "all" else set(retry.split(","))) if retry else False,
        argv=sys.argv)


def execute(make_job: Callable[[], Job], opts: RunOptions) -> None:
    """Build the job and run it; exit with the engine's status (0, 1, 2 or 130)."""
    try:
        report = run_job(make_job(), opts)
    except (UsageError, ValueError) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_USAGE)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(EXIT_INTERRUPTED)
    sys.exit(report.exit_code)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="datamill")
def main() -> None:
    """Turn raw media collections into training-ready datasets on every core.

    Every job is `datamill JOB SRC DST [options]`; running the same command again resumes.
    """


@main.command()
@click.argument("dst", type=click.Path())
def status(dst: str) -> None:
    """Summarise a job folder (counts, failures, options, runs) without running anything."""
    from .engine.status import describe
    try:
        click.echo(describe(dst))
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


@main.command()
@click.argument("folder", type=click.Path(), default="datamill-demo")
@click.option("--workers", type=click.IntRange(min=1))
@click.option("--quiet", "-q", is_flag=True)
def demo(folder: str, workers: int | None, quiet: bool) -> None:
    """Generate a small dataset in FOLDER (default ./datamill-demo) and run every job on it."""
    from .demo import run_demo
    sys.exit(run_demo(folder, workers=workers, quiet=quiet))


if __name__ == "__main__":  # pragma: no cover
    main()
