"""The `nami` command. Subcommands import torch and nami_core lazily, so `nami --help` is instant."""

from __future__ import annotations

import sys
from functools import lru_cache

import typer

try:  # typer >= 0.20 vendors click
    from typer._click import exceptions as click_exceptions
except ImportError:  # pragma: no cover
    from click import exceptions as click_exceptions

from . import bench, convert, evaluate, info, plot, prepare, sample, teardown, train
from .build import APP_SETTINGS, finish, with_optional_values

app = typer.Typer(
    name="nami",
    help="NAMI progressive rectified flow transformers: prepare data, train, sample, benchmark, evaluate.",
    **APP_SETTINGS,
)

app.command("prepare-data")(prepare.prepare_data)
app.command("train")(train.train)
app.command("sample")(sample.sample)
app.command("plot")(plot.plot)
app.add_typer(bench.app, name="bench")
app.add_typer(evaluate.app, name="eval")
app.add_typer(convert.app, name="convert")
app.command("info")(info.info)


@lru_cache(maxsize=1)
def command():
    """The click command tree of `app`, built once and finished (`build.finish`)."""
    return finish(typer.main.get_command(app))


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
