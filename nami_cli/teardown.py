"""Ending the `nami` process without the interpreter's teardown once a command's files are written.

With torch, diffusers and transformers imported, Python's own shutdown (clearing every module and
collecting their objects) takes about as long as sampling a 64 px image: seconds on a 2-core CPU. A
command whose outputs are all written and closed can skip it. Only the console entry point enables
this, so `run([...])` called from Python (tests, notebooks) returns normally.
"""

from __future__ import annotations

import os
import sys

_enabled = False


def enable() -> None:
    """Allow `finish()` to end the process (called by the console entry point)."""
    global _enabled
    _enabled = True


def finish() -> None:
    """Flush stdout and stderr and end the process with status 0, if enabled; otherwise return."""
    if not _enabled:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
