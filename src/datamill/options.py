"""Options declared once: each option is a field of its job's options dataclass, declared
with `option()` (default, help, choices, range, command-line flag, whether it enters the
fingerprint).  Everything else is derived from that declaration:

- `validate(obj)`: one validation path, raising `OptionError` (a `UsageError`, so exit 2 on
  the command line, and a `ValueError` for Python callers) naming the flag, then the class's
  own cross-field `check()`;
- `fingerprint(obj)`: the options that change per-item results;
- `click_params(cls)`: the click options of a command;
- `from_flat(cls, kwargs)`: the options object from flat keyword arguments (the Python API's
  ``datamill.clips(src, dst, frames=64, workers=8)`` and the command line's parsed values).

A field whose type is itself an options dataclass is declared with `group()`; its options
are flattened (``DownloadOptions.fetch.timeout`` is ``--timeout`` and ``timeout=``)::

    @dataclass(frozen=True)
    class ClipOptions(Options):
        frames: int = option(64, "Frames per clip.", min=1)
        codec: str = option("h264", "Video codec.", choices=CODECS)

Imports nothing of datamill but the error it raises, so every layer may use it.
"""
from __future__ import annotations

import dataclasses
from dataclasses import MISSING, dataclass
from typing import Any, Callable, Iterator

from .errors import UsageError

__all__ = ["OptionError", "Options", "Spec", "option", "group", "validate", "fingerprint",
           "click_params", "from_cli", "from_flat", "split_flat", "flat_names", "flag_of",
           "comma_list", "parse_extensions", "parse_bytes", "parse_wxh"]


class OptionError(UsageError, ValueError):
    """A bad option value: a usage error (exit 2) that names the option's flag."""


@dataclass(frozen=True)
class Spec:
    """How one option is declared (kept in its dataclass field's metadata)."""

    help: str = ""
    choices: tuple | None = None
    min: float | None = None
    max: float | None = None
    min_open: bool = False  # the value must be more than `min`
    flag: str | None = None  # default: --<name with dashes>
    aliases: tuple[str, ...] = ()  # further flags (-q)
    name: str | None = None  # the keyword argument, when not the field's name
    metavar: str | None = None
    folder: bool = False  # a folder path (on the command line)
    parse: Callable[[str], Any] | None = None  # the command line's text to the value
    multiple: bool = False  # the flag may be repeated (values joined with commas for parse)
    off_flag: str | None = None  # a second flag that sets the option to None (--no-report)
    kind: str | None = None  # "int" or "float" (default: from the field's annotation)
    fingerprint: bool = True
    cli: bool = True  # False: a Python-only option
    show_default: bool = True
    click: dict | None = None  # further click.option arguments
    entries: dict[str, "Spec"] | None = None  # a dict field: one option per key


def option(default: Any = MISSING, help: str = "", *, default_factory: Any = MISSING,
           **spec: Any) -> Any:
    """A dataclass field declaring one option (see `Spec` for the keywords)."""
    return dataclasses.field(default=default, default_factory=default_factory,
                             metadata={"option": Spec(help=help, **spec)})


def group(cls: type, *, fingerprint_key: str | None = None) -> Any:
    """A field holding a nested options dataclass, whose options are flattened.  Its
    fingerprinted options enter the fingerprint flat, or as one dict under `fingerprint_key`."""
    return dataclasses.field(default_factory=cls,
                             metadata={"group": cls, "fingerprint_key": fingerprint_key})


class Options:
    """Base of options dataclasses: `validate()` and `fingerprint()` from the declarations.
    A subclass adds the checks that involve several options in `check()`."""

    def validate(self) -> None:
        validate(self)

    def check(self) -> None:
        """Cross-option checks; raise OptionError."""

    def fingerprint(self) -> dict:
        return fingerprint(self)


def _name(f: dataclasses.Field, spec: Spec) -> str:
    return spec.name or f.name


def flag_of(name: str) -> str:
    """The default flag of an option: --<name with dashes>."""
    return "--" + name.replace("_", "-")


def _declared(cls: Any) -> Iterator[tuple[dataclasses.Field, Spec | None, type | None]]:
    """(field, spec, nested group class) of every declared field of `cls`."""
    for f in dataclasses.fields(cls):
        if "group" in f.metadata:
            yield f, None, f.metadata["group"]
        elif "option" in f.metadata:
            yield f, f.metadata["option"], None


def _specs(cls: Any) -> Iterator[tuple[str, dataclasses.Field, Spec]]:
    """(flat name, field, spec) of every option of `cls`, nested groups flattened."""
    for f, spec, nested in _declared(cls):
        if nested is not None:
            yield from _specs(nested)
        else:
            assert spec is not None
            yield _name(f, spec), f, spec
            for key, entry in (spec.entries or {}).items():
                yield _entry_name(entry, key), f, entry


def _entry_name(entry: Spec, key: str) -> str:
    return entry.name or key


def flat_names(cls: Any) -> list[str]:
    """Every keyword argument `from_flat(cls, ...)` takes."""
    names = []
    for f, spec, nested in _declared(cls):
        if nested is not None:
            names.append(f.name)  # the nested object itself (image=ImageOptions(...))
    return names + [name for name, _, _ in _specs(cls)]


# --- validation ---------------------------------------------------------------------------

def _kind(f: dataclasses.Field, spec: Spec) -> str:
    return spec.kind or str(f.type)


def _is_int(f: dataclasses.Field, spec: Spec) -> bool:
    return _kind(f, spec).startswith("int")


def _check_value(value: Any, f: dataclasses.Field, spec: Spec, flag: str) -> None:
    if value is None:
        return
    if spec.choices is not None and value not in spec.choices:
        raise OptionError(f"{flag} must be one of {', '.join(map(str, spec.choices))}, "
                          f"not {value!r}")
    if spec.min is None and spec.max is None:
        return
    number = (int,) if _is_int(f, spec) else (int, float)
    if isinstance(value, bool) or not isinstance(value, number):
        kind = "an integer" if _is_int(f, spec) else "a number"
        raise OptionError(f"{flag} must be {kind}, not {value!r}")
    low_ok = spec.min is None or (value > spec.min if spec.min_open else value >= spec.min)
    high_ok = spec.max is None or value <= spec.max
    if low_ok and high_ok:
        return
    if spec.min is not None and spec.max is not None:
        raise OptionError(f"{flag} must be between {spec.min} and {spec.max}, not {value!r}")
    if spec.min is not None:
        word = "more than" if spec.min_open else "at least"
        raise OptionError(f"{flag} must be {word} {spec.min}, not {value!r}")
    raise OptionError(f"{flag} must be at most {spec.max}, not {value!r}")


def validate(obj: Any) -> None:
    """Check every declared option of `obj` (nested groups included), then `obj.check()`;
    raise OptionError naming the first bad one by its flag."""
    for f, spec, nested in _declared(obj):
        value = getattr(obj, f.name)
        if nested is not None:
            validate(value)
            continue
        assert spec is not None
        if spec.entries:
            for key, entry in spec.entries.items():
                name = _entry_name(entry, key)
                _check_value(value.get(key), f, entry, entry.flag or flag_of(name))
        else:
            _check_value(value, f, spec, spec.flag or flag_of(_name(f, spec)))
    check = getattr(obj, "check", None)
    if check is not None:
        check()


def fingerprint(obj: Any) -> dict:
    """The fingerprinted options of `obj` by keyword name (nested groups flat, or under
    their `fingerprint_key`)."""
    out: dict[str, Any] = {}
    for f, spec, nested in _declared(obj):
        value = getattr(obj, f.name)
        if nested is not None:
            sub = fingerprint(value)
            key = f.metadata["fingerprint_key"]
            out.update({key: sub} if key else sub)
        elif spec is not None and spec.fingerprint:
            out[_name(f, spec)] = value
    return out


# --- building from flat keyword arguments -------------------------------------------------

def from_flat(cls: Any, kwargs: dict[str, Any]) -> Any:
    """An instance of `cls` from flat keyword arguments (consumed from `kwargs`); a nested
    group may also be given whole by its field name, flat ones then override its fields."""
    values: dict[str, Any] = {}
    for f, spec, nested in _declared(cls):
        if nested is not None:
            base = kwargs.pop(f.name, None)
            sub = from_flat(nested, kwargs)
            if base is not None:
                given = {g.name: getattr(sub, g.name) for g in dataclasses.fields(sub)
                         if _given(sub, g, nested)}
                sub = dataclasses.replace(base, **given)
            values[f.name] = sub
            continue
        assert spec is not None
        name = _name(f, spec)
        if name in kwargs:
            values[f.name] = kwargs.pop(name)
        if spec.entries:
            entries = dict(values.get(f.name) or {})
            for key, entry in spec.entries.items():
                value = kwargs.pop(_entry_name(entry, key), None)
                if value is not None:
                    entries[key] = value
            if entries:
                values[f.name] = entries
    return cls(**values)


def _given(obj: Any, f: dataclasses.Field, cls: type) -> bool:
    """Whether field `f` of `obj` differs from `cls`'s default."""
    default = f.default if f.default is not MISSING else (
        f.default_factory() if f.default_factory is not MISSING else MISSING)  # type: ignore[misc]
    return getattr(obj, f.name) != default


def split_flat(classes: list[Any], kwargs: dict[str, Any]) -> list[Any]:
    """One instance of each class from the same flat keyword arguments; a name declared by
    several classes goes to the first.  Unknown names are refused, listing the valid ones."""
    kwargs = dict(kwargs)
    objects = [from_flat(cls, kwargs) for cls in classes]
    if kwargs:
        valid = sorted({n for cls in classes for n in flat_names(cls)})
        raise OptionError(f"unknown option{'s' if len(kwargs) > 1 else ''} "
                          f"{', '.join(sorted(kwargs))}; valid options: {', '.join(valid)}")
    return objects


# --- the command line ---------------------------------------------------------------------

def click_params(cls: Any, exclude: set[str] = frozenset()) -> list[Any]:  # type: ignore[assignment]
    """The click options of `cls`'s command-line options, each named by its keyword (so the
    command's keyword arguments go to `from_flat`); `exclude` drops these flags."""
    params = []
    for name, f, spec in _specs(cls):
        if spec.entries is not None:
            continue  # a dict field's options are its entries
        flag = spec.flag or flag_of(name)
        if not spec.cli or flag in exclude:
            continue
        params.append(_click_option(name, f, spec, flag))
        if spec.off_flag:
            import click
            params.append(click.Option([spec.off_flag, f"{name}__off"], is_flag=True,
                                       help=f"No {flag} (sets it to None)."))
    return params


def from_cli(kwargs: dict[str, Any]) -> dict[str, Any]:
    """A command's keyword arguments with the off flags applied (``--no-report``)."""
    out = {}
    for key, value in kwargs.items():
        if key.endswith("__off"):
            if value:
                out[key[:-len("__off")]] = None
        elif key not in out:
            out[key] = value
    return out


def _default(f: dataclasses.Field) -> Any:
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return None


def _click_option(name: str, f: dataclasses.Field, spec: Spec, flag: str) -> Any:
    import click
    default = _default(f) if spec is f.metadata.get("option") else None  # an entry: None
    kw: dict[str, Any] = {"help": spec.help, "metavar": spec.metavar}
    if isinstance(default, bool) and spec.click is None:
        kw.update(is_flag=True, flag_value=not default, default=default)
    else:
        kw["type"] = _click_type(f, spec)
        if spec.parse is not None:
            kw["callback"] = _callback(spec, default)
            kw["type"] = click.STRING
        elif default is not None:
            kw["default"] = default
        if default is not None and spec.show_default:
            kw["show_default"] = _shown(default)
        kw["multiple"] = spec.multiple
    kw.update(spec.click or {})
    return click.Option([flag, *spec.aliases, name], **kw)


def _shown(default: Any) -> Any:
    if isinstance(default, tuple):
        return ",".join(map(str, default)) or False
    return True


def _click_type(f: dataclasses.Field, spec: Spec) -> Any:
    import click
    if spec.folder:
        return click.Path(file_okay=False)
    if spec.choices is not None:
        return click.Choice([str(c) for c in spec.choices])
    integer = _is_int(f, spec)
    if spec.min is None and spec.max is None:
        return click.INT if integer else (click.FLOAT if _kind(f, spec).startswith("float")
                                          else click.STRING)
    if integer:
        return click.IntRange(spec.min, spec.max)  # type: ignore[arg-type]
    return click.FloatRange(spec.min, spec.max, min_open=spec.min_open)


def _callback(spec: Spec, default: Any) -> Callable[..., Any]:
    import click
    parse = spec.parse
    assert parse is not None

    def callback(ctx: Any, param: Any, value: Any) -> Any:
        if spec.multiple:
            value = ",".join(value) if value else None
        if value is None:
            return default
        try:
            parsed = parse(value)
        except ValueError as exc:
            raise click.BadParameter(str(exc)) from exc
        return default if parsed == () else parsed
    return callback


# --- parsers of command-line values -------------------------------------------------------

def comma_list(value: str) -> tuple[str, ...]:
    """"a, b,c" as ("a", "b", "c")."""
    return tuple(v.strip() for v in value.split(",") if v.strip())


def parse_extensions(value: str) -> tuple[str, ...]:
    """"MP4,.mov" as ("mp4", "mov")."""
    return tuple(e.lstrip(".").lower() for e in comma_list(value))


_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "kib": 1024, "m": 1000**2, "mb": 1000**2,
          "mib": 1024**2, "g": 1000**3, "gb": 1000**3, "gib": 1024**3, "t": 1000**4,
          "tb": 1000**4, "tib": 1024**4}


def parse_bytes(value: str) -> int:
    """"256MB", "1.5GiB", "4096" as a number of bytes."""
    text = str(value).strip().lower().replace(" ", "")
    number = text.rstrip("kmgtib")
    unit = text[len(number):]
    try:
        if unit not in _UNITS:
            raise ValueError
        return int(float(number) * _UNITS[unit])
    except ValueError:
        raise OptionError(f"{value!r} is not a size (examples: 4096, 256MB, 1GiB)") from None


def parse_wxh(value: str) -> tuple[int, int]:
    """"565x320" as (565, 320)."""
    try:
        w, h = (int(x) for x in str(value).lower().split("x"))
    except ValueError:
        raise OptionError(f"expected WIDTHxHEIGHT like 565x320, not {value!r}") from None
    return w, h
