"""The `nami` command. Subcommands import torch and nami_core lazily, so `nami --help` is instant."""

from __future__ import annotations

import math
import sys
from functools import lru_cache

import typer

try:  # typer >= 0.20 vendors click
    from typer._click import exceptions as click_exceptions
except ImportError:  # pragma: no cover
    from click import exceptions as click_exceptions

from . import bench, convert, evaluate, info, prepare, sample, teardown, train

app = typer.Typer(
    name="nami",
    help="NAMI progressive rectified flow transformers: prepare data, train, sample, benchmark, evaluate.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

app.command("prepare-data")(prepare.prepare_data)
app.command("train")(train.train)
app.command("sample")(sample.sample)
app.add_typer(bench.app, name="bench")
app.add_typer(evaluate.app, name="eval")
app.add_typer(convert.app, name="convert")
app.command("info")(info.info)


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


INT_RANGE = (-(2**63), 2**63 - 1)  # every integer option fits a 64-bit signed integer
SEED_RANGE = (0, 2**63 - 1)


def checked_number(param, value):
    """Refuse a NaN or infinite float and an integer outside 64 bits (seeds: 0 and up) as a usage
    error naming the option, before any command runs."""
    if value is None or isinstance(value, bool):
        return value
    flag = max(param.opts, key=len)
    if isinstance(value, float) and not math.isfinite(value):
        raise click_exceptions.BadParameter(f"{value} is not a finite number", param_hint=flag)
    if isinstance(value, int):
        low, high = SEED_RANGE if param.name == "seed" else INT_RANGE
        if not low <= value <= high:
            raise click_exceptions.BadParameter(f"{value} is out of range ({low} to {high})", param_hint=flag)
    return value


def guard_numbers(command) -> None:
    """Chain `checked_number` onto every int and float option of `command` and its subcommands."""
    for sub in getattr(command, "commands", {}).values():
        guard_numbers(sub)
    for param in getattr(command, "params", []):
        annotation = getattr(getattr(param, "type_descriptor", None), "annotation", None)
        if annotation not in (int, float):
            continue
        inner = param.callback
        param.callback = (lambda ctx, p, v, inner=inner: checked_number(p, inner(ctx, p, v) if inner else v))


@lru_cache(maxsize=1)
def command():
    """The click command tree of `app`, built once, with its numeric options guarded."""
    built = typer.main.get_command(app)
    guard_numbers(built)
    return built


def fail(message: str, code: int = 2) -> None:
    """Print one line to stderr and exit."""
    sys.stderr.write(f"error: {message}\n")
    sys.stderr.flush()
    raise SystemExit(code)


def run(argv: list[str] | None = None) -> None:
    """Console entry point: user errors become one line on stderr and exit status 2."""
    from nami_core.errors import NamiError

    if argv is None:  # the console command itself, not a call from Python
        teardown.enable()
    args = with_optional_values(list(sys.argv[1:] if argv is None else argv))
    try:
        result = command().main(args=args, prog_name="nami", standalone_mode=False)
    except click_exceptions.NoArgsIsHelpError:
        raise SystemExit(0) from None  # the help was already printed
    except click_exceptions.UsageError as exc:
        fail(exc.format_message().replace("\n", " "))
    except typer.Abort as exc:
        if isinstance(exc.__cause__, EOFError):
            fail("unexpected end of file (a truncated or corrupt file?)")
        fail("aborted", 130)
    except KeyboardInterrupt:
        fail("interrupted", 130)
    except NamiError as exc:
        fail(str(exc).replace("\n", " "))
    except FileNotFoundError as exc:
        fail(f"file not found: {exc.filename or exc}")
    except PermissionError as exc:
        fail(f"permission denied: {exc.filename or exc}")
    except MemoryError:
        fail("out of memory")
    except OSError as exc:
        from nami_core.files import disk_full, is_disk_full

        if is_disk_full(exc):
            fail(str(disk_full(exc.filename or "a file")))
        fail(f"{exc.strerror or exc}: {exc.filename}" if exc.filename else str(exc))
    except RuntimeError as exc:
        if "out of memory" in str(exc).lower():
            fail("out of memory: " + str(exc).splitlines()[0])
        raise
    if isinstance(result, int) and result != 0:
        raise SystemExit(result)


if __name__ == "__main__":
    run()
