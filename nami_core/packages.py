"""Optional packages: whether one is installed, asked without importing it (so a run that needs a
missing one is refused in one line before torch or a model loads)."""

from __future__ import annotations

import importlib.util


def installed(module: str) -> bool:
    """Whether `module` can be imported (found on the path; not imported)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a finder that refuses it, or a broken package
        return False
