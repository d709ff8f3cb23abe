"""Options are declared once: the command line and the Python API are derived from the same
declarations, with the same defaults and one validation path."""
from __future__ import annotations

import pytest

from datamill import cli
from datamill.errors import UsageError
from datamill.engine.run import RunOptions
from datamill.io.http import FetchOptions
from datamill.jobs.clips import ClipOptions
from datamill.jobs.dedup import DedupOptions
from datamill.jobs.download import DownloadOptions
from datamill.media.image import ImageOptions
from datamill.media.video import CODECS
from datamill.options import OptionError, split_flat

JOBS = {"clips": ClipOptions, "download": DownloadOptions, "dedup": DedupOptions}


def cli_defaults(command: str) -> dict:
    """Each option of `datamill COMMAND` with its default as the command would pass it."""
    cmd = cli.main.get_command(None, command)
    ctx = cmd.make_context(command, ["SRC", "DST"])
    return {k: v for k, v in ctx.params.items() if k not in ("src", "dst")}


@pytest.mark.parametrize("command", sorted(JOBS))
def test_cli_defaults_equal_the_api_defaults(command):
    """What the command builds with no option given is what the Python function builds with
    no keyword given, for the job's options and the engine's."""
    from datamill.options import from_cli
    from_cli_opts, from_cli_run = split_flat([JOBS[command], RunOptions],
                                             from_cli(cli_defaults(command)))
    api_opts, api_run = split_flat([JOBS[command], RunOptions], {})
    assert from_cli_opts == api_opts == JOBS[command]()
    assert from_cli_run == api_run == RunOptions()


def test_every_cli_option_is_an_api_keyword():
    from datamill.options import flat_names
    for command, cls in JOBS.items():
        names = set(flat_names(cls)) | set(flat_names(RunOptions))
        for param in cli.main.get_command(None, command).params:
            if param.name not in ("src", "dst") and not param.name.endswith("__off"):
                assert param.name in names, (command, param.name)


def test_download_retries_and_timeout_are_per_url_in_both():
    params = {p.name: p for p in cli.main.get_command(None, "download").params}
    assert params["retries"].default == 2 == FetchOptions().retries
    assert params["timeout"].default == 10.0 == FetchOptions().timeout
    opts, run = split_flat([DownloadOptions, RunOptions], {"retries": 5, "timeout": 3.0})
    assert (opts.fetch.retries, opts.fetch.timeout) == (5, 3.0)
    assert (run.retries, run.timeout) == (RunOptions().retries, RunOptions().timeout)
    # the other jobs keep the engine's per-item ones
    clip_params = {p.name: p for p in cli.main.get_command(None, "clips").params}
    assert clip_params["retries"].default == RunOptions().retries == 1


def test_download_takes_option_objects_and_flat_names():
    opts, _ = split_flat([DownloadOptions, RunOptions], {
        "image": ImageOptions(resize=64, encode="webp"), "fetch": FetchOptions(concurrency=8),
        "min_size": 10, "format": "parquet"})
    assert (opts.image.resize, opts.image.encode, opts.image.min_size) == (64, "webp", 10)
    assert (opts.fetch.concurrency, opts.output_format) == (8, "parquet")


def test_unknown_option_is_refused_listing_the_valid_ones():
    with pytest.raises(UsageError, match="unknown option framez; valid options: .*frames"):
        split_flat([ClipOptions, RunOptions], {"framez": 3})


@pytest.mark.parametrize("opts, message", [
    (ClipOptions(frames=0), "--frames must be at least 1"),
    (ClipOptions(codec="mjpeg"), "--codec must be one of h264"),
    (ClipOptions(crf=64), "--crf must be between 0 and 63"),
    (ClipOptions(max_side="big"), "--max-side must be an integer"),
    (DedupOptions(threshold=40), "--threshold must be between 0 and 32"),
    (DedupOptions(action="move-duplicates"), "--move-to DIR"),
    (DownloadOptions(image=ImageOptions(quality=101)), "--quality must be between 0 and 100"),
    (DownloadOptions(output_format="zip"), "--format must be one of files"),
    (RunOptions(workers=0), "--workers must be at least 1"),
])
def test_a_bad_value_is_a_usage_error_naming_the_flag(opts, message):
    with pytest.raises(UsageError, match=message):
        opts.validate()


def test_option_errors_are_also_value_errors_for_python_callers():
    with pytest.raises(ValueError, match="--timeout must be more than 0"):
        FetchOptions(timeout=0)
    assert issubclass(OptionError, UsageError)


def test_one_codec_list():
    assert ClipOptions.__dataclass_fields__["codec"].metadata["option"].choices is CODECS


def test_fingerprints_hold_the_declared_options():
    assert DedupOptions().fingerprint() == {"hash": "phash", "fast": False, "min_size": None,
                                            "min_bytes": None}
    clip = ClipOptions(frames=10).fingerprint()
    assert clip["stride"] == 10 and "task_frames" not in clip and "extensions" not in clip
    download = DownloadOptions().fingerprint()
    assert set(download) == {"url_col", "caption_col", "keep_cols", "format", "image",
                             "max_bytes", "honor_robots"}
    assert download["image"]["resize_mode"] == "keep_ratio"
