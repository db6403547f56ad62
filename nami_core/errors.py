"""Errors a user can cause. The CLI prints them as one line and exits with status 2."""


class NamiError(Exception):
    """A problem with the user's input: a bad flag, file, config or checkpoint."""


class ConfigError(NamiError, ValueError):
    """A configuration value is invalid. The message names the field."""


class DiskFullError(NamiError):
    """The disk filled up while writing; the message names the file. What was written before stays."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message, or its type's name when it has none."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
