"""The command line: parse arguments into a job's options and hand them to the engine.

The process starts in __main__.py (`run`), which turns Ctrl-C and click's errors into exit
statuses; the commands here exit with the engine's status.
"""
from __future__ import annotations

import sys
from typing import Any

import click

from .errors import UsageError

EXIT_USAGE = 2  # engine/run.py's, without loading the engine for `--help`

# The job commands live in job_commands.py, loaded when one is asked for; their one-line help
# is repeated here so that `datamill --help` lists them without loading PyAV and PyArrow.
JOB_COMMANDS = {
    "clips": "Cut every video under SRC into fixed-length, resized clips in DST (mirroring SRC).",
    "download": "Download the images of a URL list URLS (txt, csv, tsv, jsonl, parquet, .gz) "
                "into DST.",
    "dedup": "Find exact and near-duplicate images under SRC: groups, report and survivors in DST.",
    "map": "Run a function (--fn FILE.py:NAME) over the items of SRC into shards in DST.",
    "streams": "Write the time-aligned windows of several videos (SRC...) into DST.",
}


class _Commands(click.Group):
    """A group whose job commands are imported only when used."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *JOB_COMMANDS])

    def get_command(self, ctx: click.Context | None, name: str) -> click.Command | None:
        if name in JOB_COMMANDS:
            from . import job_commands
            return getattr(job_commands, name if name != "map" else "map_")
        return super().get_command(ctx, name)  # type: ignore[arg-type]

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = []
        for name in self.list_commands(ctx):
            if name in JOB_COMMANDS:
                rows.append((name, JOB_COMMANDS[name]))
            else:
                rows.append((name, self.commands[name].get_short_help_str(
                    formatter.width - 6 - len(name))))
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=_Commands,
             context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--version", is_flag=True, expose_value=False, is_eager=True,
              help="Show the version and exit.", callback=lambda ctx, _, asked: _version(ctx, asked))
def main() -> None:
    """Turn raw media collections into training-ready datasets on every core.

    Every job is `datamill JOB SRC DST [options]`; running the same command again resumes.
    """


def _version(ctx: click.Context, asked: bool) -> None:
    """--version: read from the package's metadata only when asked (importing
    importlib.metadata costs every command 40 ms)."""
    if asked and not ctx.resilient_parsing:
        from . import __version__
        click.echo(f"datamill, version {__version__}")
        ctx.exit()


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


@main.command()
@click.argument("folder", type=click.Path(), default="datamill-demo")
@click.option("--workers", type=click.IntRange(min=1))
@click.option("--quiet", "-q", is_flag=True)
def demo(folder: str, workers: int | None, quiet: bool) -> None:
    """Generate a small dataset in FOLDER (default ./datamill-demo) and run every job on it."""
    from .demo import run_demo
    sys.exit(run_demo(folder, workers=workers, quiet=quiet))
