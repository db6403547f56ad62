"""The click command tree of `nami`, built once from the Typer app and finished by mechanism:

* every int and float option refuses NaN, infinities and integers beyond 64 bits (seeds: 0 and
  up), and every path parameter an empty value, as a usage error naming it, before any command
  runs (`guard_values`);
* flags show as flags in the help: typer's rich help prints a type after every option, `<bool>`
  for a flag that takes no value, unless the option has a metavar (`show_flags_as_flags`);
* an option left at None shows the default of the core dataclass or function the command fills
  (`options.defaults_from`), so the help states every default without the CLI owning one
  (`show_core_defaults`), and the bounds its field declares (`show_core_bounds`).
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from pathlib import Path
from typing import Any, Iterator

try:  # typer >= 0.20 vendors click
    from typer._click import Context
    from typer._click import exceptions as click_exceptions
except ImportError:  # pragma: no cover
    from click import Context
    from click import exceptions as click_exceptions

HELP_OPTION_NAMES = ["-h", "--help"]
# the settings of every Typer app of `nami` (the root, bench, convert, eval, eval nami1k)
APP_SETTINGS = dict(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                    context_settings={"help_option_names": HELP_OPTION_NAMES})

INT_RANGE = (-(2**63), 2**63 - 1)  # every integer option fits a 64-bit signed integer

# Options whose value may be left out: the bare flag means this value (`--grad-checkpointing` = full).
OPTIONAL_VALUES = {"--grad-checkpointing": "full"}


def with_optional_values(argv: list[str]) -> list[str]:
    """Insert the implied value after a bare option of `OPTIONAL_VALUES` (last, or before another option)."""
    out = []
    for i, arg in enumerate(argv):
        out.append(arg)
        if arg in OPTIONAL_VALUES and (i + 1 == len(argv) or argv[i + 1].startswith("-")):
            out.append(OPTIONAL_VALUES[arg])
    return out


def commands(command, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    """(path, command) of every command below `command` that runs (groups are walked, not yielded)."""
    subcommands = getattr(command, "commands", None)
    if subcommands is None:
        yield path, command
        return
    for name, sub in subcommands.items():
        yield from commands(sub, (*path, name))


def options_of(command) -> list:
    return [p for p in getattr(command, "params", []) if p.param_type_name == "option"]


def flag_of(param) -> str:
    """An option's longest spelling: `--batch-size`."""
    return max(param.opts, key=len)


def checked_number(param, value):
    """Refuse a NaN or infinite float and an integer outside 64 bits (seeds: 0 and up) as a usage
    error naming the option, before any command runs."""
    if value is None or isinstance(value, bool):
        return value
    flag = flag_of(param)
    if isinstance(value, float) and not math.isfinite(value):
        raise click_exceptions.BadParameter(f"{value} is not a finite number", param_hint=flag)
    if isinstance(value, int):
        from nami_core.config import MAX_SEED

        low, high = (0, MAX_SEED) if param.name == "seed" else INT_RANGE
        if not low <= value <= high:
            raise click_exceptions.BadParameter(f"{value} is out of range ({low} to {high})", param_hint=flag)
    return value


def name_of(param) -> str:
    """How an error names a parameter: an option's longest spelling, an argument's name (SRC)."""
    return flag_of(param) if param.param_type_name == "option" else param.name.upper()


def checked_path(param, value):
    """Refuse an empty path as a usage error naming the parameter: typer would read `''` as the
    current folder, so the core would never see that it was empty."""
    for item in value if isinstance(value, (list, tuple)) else (value,):
        if isinstance(item, str) and not item.strip():
            raise click_exceptions.UsageError(f"{name_of(param)} is empty; give a path")
    return value


def is_path(annotation: Any) -> bool:
    """A `Path` annotation, or a list of paths."""
    return annotation is Path or Path in getattr(annotation, "__args__", ())


def guard_values(root) -> None:
    """Chain `checked_number` onto every int and float parameter below `root`; check every path
    parameter's text with `checked_path` before typer turns it into a `Path`."""
    for _, command in commands(root):
        for param in getattr(command, "params", []):
            annotation = getattr(getattr(param, "type_descriptor", None), "annotation", None)
            if annotation in (int, float):
                inner = param.callback
                param.callback = (lambda ctx, p, v, inner=inner: checked_number(p, inner(ctx, p, v) if inner else v))
            elif is_path(annotation):
                convert = param.process_value
                param.process_value = (lambda ctx, v, p=param, convert=convert: convert(ctx, checked_path(p, v)))


def show_flags_as_flags(root) -> None:
    """No type after a flag in the help (typer's rich help prints `<bool>` unless a metavar is set),
    `--help` included (click makes it once per command and keeps it)."""
    for command in (root, *groups(root), *(c for _, c in commands(root))):
        help_option = command.get_help_option(Context(command, help_option_names=HELP_OPTION_NAMES))
        for param in [*options_of(command), *([help_option] if help_option is not None else [])]:
            if param.is_flag or param.count:
                param.metavar = ""


def groups(root) -> Iterator[Any]:
    """Every group below `root`."""
    for sub in getattr(root, "commands", {}).values():
        if getattr(sub, "commands", None) is not None:
            yield sub
            yield from groups(sub)


def default_text(value: Any) -> str | None:
    """How the help shows a core default; None where there is nothing to show (None, empty)."""
    from nami_core.config import number_text

    if value is None or value == ():
        return None
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return number_text(value)
    if isinstance(value, (tuple, list)):
        return ",".join(number_text(v) if isinstance(v, float) else str(v) for v in value)
    return str(value)


def core_defaults(owner: Any) -> dict[str, str]:
    """flag -> shown default of a core dataclass (its fields: default, or metadata "shown") or of
    a core function (its keyword defaults)."""
    from nami_core.config import option_of

    shown: dict[str, str] = {}
    if dataclasses.is_dataclass(owner):
        for f in dataclasses.fields(owner):
            if not f.init:
                continue
            text = f.metadata.get("shown") or default_text(
                f.default_factory() if f.default_factory is not dataclasses.MISSING else
                None if f.default is dataclasses.MISSING else f.default)
            if text:
                shown[option_of(f)] = text
        return shown
    for name, parameter in inspect.signature(owner).parameters.items():
        text = default_text(None if parameter.default is inspect.Parameter.empty else parameter.default)
        if text:
            shown["--" + name.replace("_", "-")] = text
    return shown


def owners_of(command) -> tuple:
    return getattr(getattr(command, "callback", None), "__nami_owners__", ())


def show_core_defaults(root) -> None:
    """Show, for every option a command leaves at None, the default its core owner applies."""
    for _, command in commands(root):
        shown: dict[str, str] = {}
        for owner in owners_of(command):
            shown = {**core_defaults(owner), **shown}  # the first owner that has the option wins
        for param in options_of(command):
            text = shown.get(flag_of(param))
            if param.default is not None or param.required or text is None:
                continue
            if param.is_flag:  # a flag pair shows the spelling in force; a single flag is off unless given
                if param.secondary_opts:
                    param.show_default = (param.opts if text == "on" else param.secondary_opts)[0].lstrip("-")
            else:
                param.show_default = text


def core_bounds(owner: Any) -> dict[str, str]:
    """flag -> what the help says about the bounds a core dataclass's field declares (`config.bounds_text`)."""
    from nami_core.config import bounds_text, option_of

    if not dataclasses.is_dataclass(owner):
        return {}
    return {option_of(f): text for f in dataclasses.fields(owner) if (text := bounds_text(f.metadata))}


def show_core_bounds(root) -> None:
    """Append to the help of every option the bounds its core owner declares: "(1 to 4,096)". The
    help as declared stays in `declared_help` (`consistency` compares that one)."""
    for _, command in commands(root):
        bounds: dict[str, str] = {}
        for owner in owners_of(command):
            bounds = {**core_bounds(owner), **bounds}
        for param in options_of(command):
            param.declared_help = param.help
            if flag_of(param) in bounds and param.help:
                param.help = f"{param.help} ({bounds[flag_of(param)]})"


def finish(root):
    """Apply every finishing step to the click tree `root` (built by typer)."""
    guard_values(root)
    show_flags_as_flags(root)
    show_core_defaults(root)
    show_core_bounds(root)
    return root
