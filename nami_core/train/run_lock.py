"""One `nami train` per run folder: RUN/.lock, held from before anything is written in RUN until
the run ends.

The lock file holds its holder's pid and host (JSON). It is created with O_CREAT | O_EXCL, so of
two runs starting at once exactly one gets it. A second run on the folder stops with one line
naming the holder. A lock left by a process that is gone (killed, say) on this same host is taken
over, with one line saying so; a lock from another host cannot be checked and is never taken over.
Under torchrun / accelerate launch only rank 0 takes it (`is_main_rank`).
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Callable

from ..errors import NamiError
from .ranks import launch_number

LOCK_NAME = ".lock"
READ_TRIES = 20  # a lock file just created may not hold its JSON yet: re-read it for up to a second


def is_main_rank() -> bool:
    """Whether this process is rank 0 of its launch (or not launched by torchrun / accelerate)."""
    return launch_number("RANK") == 0


def pid_alive(pid: int) -> bool:
    """Whether process `pid` exists on this host (one owned by another user counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunLock:
    """The exclusive lock on a run folder. `take()` or use as a context manager (released on exit,
    also on error)."""

    def __init__(self, run: Path, note: Callable[[str], None] | None = None) -> None:
        self.run = Path(run)
        self.path = self.run / LOCK_NAME
        self.note = note
        self.held = False
        self.created = False
        self.holder = {"pid": os.getpid(), "host": socket.gethostname(),
                       "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}

    def __enter__(self) -> "RunLock":
        return self.take()

    def __exit__(self, *exc) -> None:
        self.release()

    def take(self) -> "RunLock":
        """Create RUN (if new) and RUN/.lock, or stop with one line naming the run that holds it."""
        if self.run.exists() and not self.run.is_dir():
            raise NamiError(f"--out {self.run} is a file, not a run folder")
        self.created = not self.run.exists()
        self.run.mkdir(parents=True, exist_ok=True)
        for _ in range(2):  # a second try after taking over a stale lock
            if self._create():
                self.held = True
                return self
            self._take_over_or_refuse(self._read_holder())
        raise NamiError(f"could not lock {self.run}: another run took {self.path} first")

    def _create(self) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(self.holder) + "\n")
            f.flush()
            os.fsync(f.fileno())
        return True

    def _read_holder(self) -> dict | None:
        """The holder's record; None if the file is gone (released meanwhile) or stays unreadable."""
        for _ in range(READ_TRIES):
            try:
                data = json.loads(self.path.read_text(encoding="utf-8"))
                if isinstance(data, dict) and isinstance(data.get("pid"), int):
                    return data
            except FileNotFoundError:
                return None
            except (ValueError, OSError):
                pass
            time.sleep(0.05)
        raise NamiError(f"{self.run} is locked by {self.path}, which names no process; "
                        f"if no nami train uses {self.run}, delete {self.path}")

    def _take_over_or_refuse(self, holder: dict | None) -> None:
        if holder is None:
            return  # released meanwhile: try again
        pid, host = holder["pid"], holder.get("host", "?")
        if host == self.holder["host"] and not pid_alive(pid):
            if self.note is not None:
                self.note(f"taking over {self.path}: the run that held it (pid {pid} on {host}) is gone")
            try:
                self.path.unlink()
            except FileNotFoundError:
                pass
            return
        since = f", since {holder['since']}" if holder.get("since") else ""
        raise NamiError(f"{self.run} is in use by another nami train (pid {pid} on {host}{since}); wait for it "
                        f"to end or choose another --out (if it is not running, delete {self.path})")

    def release(self) -> None:
        """Remove the lock file if this process still holds it, and the run folder too if this run
        created it and left nothing in it (a run refused before its first write)."""
        if not self.held:
            return
        self.held = False
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            if data.get("pid") == self.holder["pid"] and data.get("host") == self.holder["host"]:
                self.path.unlink()
        except (OSError, ValueError, AttributeError):
            return
        if self.created:
            try:
                self.run.rmdir()  # only succeeds when empty
            except OSError:
                pass
