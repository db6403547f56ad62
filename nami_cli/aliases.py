"""Options renamed for consistency keep their old spelling as a hidden alias for one release."""

from __future__ import annotations

from typing import TypeVar

T = TypeVar("T")


def renamed(value: T | None, old_value: T | None, flag: str, old_flag: str, default: T) -> T:
    """The value of `flag`, also accepted as `old_flag` (hidden); `default` when neither is given."""
    from nami_core.errors import NamiError

    if value is not None and old_value is not None and value != old_value:
        raise NamiError(f"{old_flag} is the old name of {flag}; give {flag} once")
    if value is not None:
        return value
    return old_value if old_value is not None else default
