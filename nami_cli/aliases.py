"""Options renamed for consistency keep their old spelling as a hidden alias (`options.old_spelling`)."""

from __future__ import annotations

from typing import TypeVar

import typer

T = TypeVar("T")


def renamed(value: T | None, old_value: T | None, flag: str, old_flag: str) -> T | None:
    """The value of `flag`, also given as its old spelling `old_flag` (with a one-line note on
    stderr); None when neither was given, so the core's default applies."""
    from nami_core.errors import NamiError

    if old_value is None:
        return value
    if value is not None and value != old_value:
        raise NamiError(f"{old_flag} is the old name of {flag}; give {flag} once")
    typer.echo(f"note: {old_flag} is now {flag}", err=True)
    return old_value
