"""The job commands (clips, download, dedup, map, streams), derived from their options' declarations.

Loaded only when one of them is asked for (cli.py's group is lazy), since the job modules
import PyAV, PyArrow and aiohttp: `datamill --help` and `datamill status` start without them;
and each command imports only its own job (module `__getattr__`): `datamill dedup` does not
import aiohttp and PyAV (0.45 s).
"""
from __future__ import annotations

import functools
import sys
from typing import Any, Callable

import click

from .errors import UsageError
from .engine.job import Job
from .engine.run import EXIT_USAGE, RunOptions, run_job
from .options import click_params, from_cli, split_flat


def _params(options_cls: type) -> list[click.Parameter]:
    """The options of a job whose options are `options_cls`, then the engine's (`RunOptions`),
    derived from their declarations; a job option with the flag of an engine option replaces
    it (download's per-URL --timeout and --retries)."""
    params = click_params(options_cls)
    taken = {p.opts[0] for p in params}
    return params + click_params(RunOptions, exclude=taken)


def _command(name: str, options_cls: type, make_job: Callable[[Any, str, Any], Job],
             sources: click.Argument, more: str = "") -> click.Command:
    """The command `datamill NAME SRC DST` (`sources`: the argument named src): its one-line
    help is cli.py's (shown by `datamill --help` without this module), then `more`."""
    from .cli import JOB_COMMANDS

    def run(src: Any, dst: str, **kw: Any) -> None:
        execute(lambda: _build(options_cls, make_job, src, dst, kw))
    return click.Command(name, callback=run, help="\n\n".join(filter(None, [JOB_COMMANDS[name], more])),
                         params=[sources, click.Argument(["dst"], type=click.Path()), *_params(options_cls)])


def _build(options_cls: type, make_job: Callable[[Any, str, Any], Job], src: Any, dst: str,
           kw: dict[str, Any]) -> tuple[Job, RunOptions]:
    opts, run = split_flat([options_cls, RunOptions], from_cli(kw))
    run.validate()
    run.argv = sys.argv
    return make_job(src, dst, opts), run


def execute(build: Callable[[], tuple[Job, RunOptions]]) -> None:
    """Build the job and run it; exit with the engine's status (0, 1, 2 or 130).  Only a
    UsageError (a bad option, a missing SRC...) is exit 2: any other exception, a ValueError
    from a bug included, is a traceback and exit 1.  A Ctrl-C that the engine does not
    handle itself reaches __main__.run as KeyboardInterrupt."""
    try:
        job, opts = build()
        report = run_job(job, opts)
    except UsageError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_USAGE)
    sys.exit(report.exit_code)


def _clips() -> click.Command:
    from .jobs.clips import ClipOptions, ClipsJob
    return _command("clips", ClipOptions, lambda src, dst, opts: ClipsJob(src, dst, opts, opts.extensions),
                    _SRC)


def _download() -> click.Command:
    from .jobs.download import DownloadJob, DownloadOptions
    return _command("download", DownloadOptions, DownloadJob,
                    click.Argument(["src"], type=click.Path(), metavar="URLS"), more="""
        --timeout is a total deadline per URL (connect and every read), default 10 s; --retries
        retries connection errors, timeouts, 5xx and 429 (Retry-After honoured).""")


def _dedup() -> click.Command:
    from .jobs.dedup import DedupJob, DedupOptions
    return _command("dedup", DedupOptions, lambda src, dst, opts: DedupJob(src, dst, opts, opts.extensions),
                    _SRC, more="""
        Rerunning after adding images hashes only the new ones; changing --threshold, --keep or
        --action regroups from the stored hashes (no --overwrite needed).""")


def _map_() -> click.Command:
    from .jobs.map import MapJob, MapOptions
    return _command("map", MapOptions, MapJob, _SRC, more="""
        SRC is a folder (each file's path is an item), or a txt, csv, tsv, jsonl or parquet file,
        optionally .gz (each row is an item: a dict; a txt line a string).  Shards hold exactly
        --shard-size records (all but the last) and are numbered 00000, 00001, ... whatever the
        worker count; DST/index.json lists them; `datamill.read_shards(DST)` reads them back.""")


def _streams() -> click.Command:
    """`datamill streams SRC... DST`: several sources, then DST."""
    from .jobs.streams.write import StreamsJob, StreamsOptions
    return _command("streams", StreamsOptions, lambda src, dst, opts: StreamsJob(list(src), dst, opts),
                    click.Argument(["src"], nargs=-1, required=True, metavar="SRC..."), more="""
        One folder per window with <source>.npy (frames, WxH RGB), mask.npy and pts.npy.  Every
        source is decoded in its own process and resampled to --fps by timestamp (nearest
        frame); a frame no source frame is near is missing (--on-missing).  A rerun writes
        only the windows not written yet.  `datamill.streams(...)` in Python gives the same
        windows live, as arrays in shared memory.""")


_SRC = click.Argument(["src"], type=click.Path())
_COMMANDS = {"clips": _clips, "download": _download, "dedup": _dedup, "map_": _map_,
             "streams": _streams}


@functools.cache
def __getattr__(name: str) -> click.Command:
    """`job_commands.dedup` and the like: the command, made (and its job imported) on first use."""
    if name not in _COMMANDS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return _COMMANDS[name]()
