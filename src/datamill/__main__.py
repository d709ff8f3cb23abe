"""The `datamill` command's process: the console script and `python -m datamill` start here.

Here, and only here, a command's end becomes the process's exit status: the commands' own
statuses (0, 1, 2) pass through; a usage error that click finds prints its message and
exits 2; Ctrl-C at any moment, the imports included, prints "interrupted" and exits 130,
never click's "Aborted!" (during a run the engine's loop handles Ctrl-C itself, saves what
finished and returns 130).  Nothing but `run`'s body imports anything: `import datamill`
runs no other module, so Ctrl-C is ours to handle from datamill's first line on.
"""
import sys

EXIT_INTERRUPTED = 130  # engine.run.EXIT_INTERRUPTED, not imported: it may be what Ctrl-C interrupts


def run(argv: list[str] | None = None) -> int:
    """Run the command line on `argv` (default: sys.argv[1:]); return the exit status.

    This is the process's entry, not an API: when it returns it leaves SIGINT at its
    default, so that a Ctrl-C during the interpreter's shutdown ends the process quietly.
    """
    try:
        import signal
        restore = signal.getsignal(signal.SIGINT) is signal.default_int_handler  # not if ignored
        try:
            return _run(argv)
        finally:
            if restore:
                _set_sigint(signal.SIG_DFL)
    except KeyboardInterrupt:  # during the imports, or while click maps an interrupt
        return _interrupted()


def _run(argv: list[str] | None) -> int:
    import click

    from .cli import main
    try:
        # Not standalone: click would turn KeyboardInterrupt into "Aborted!" and exit 1.
        code = main.main(args=argv, prog_name="datamill", standalone_mode=False)
    except click.exceptions.Abort:  # click's name for KeyboardInterrupt
        return _interrupted()
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    return code if isinstance(code, int) else 0  # --help, --version: click's Exit status


def _interrupted() -> int:
    _set_sigint(lambda signum, frame: None)  # a second Ctrl-C now changes nothing
    print("interrupted", file=sys.stderr, flush=True)
    return EXIT_INTERRUPTED


def _set_sigint(handler: object) -> None:
    import signal
    try:
        signal.signal(signal.SIGINT, handler)
    except ValueError:  # pragma: no cover - not the main thread
        pass


if __name__ == "__main__":
    sys.exit(run())
