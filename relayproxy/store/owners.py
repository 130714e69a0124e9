"""Who holds a credit hold, for the startup sweep: a process (pid + its kernel start time) and one
opened store in it. ``Store.release_orphan_holds`` (facade.py) releases the holds whose ``Owner``
is gone; ledger.py records the owner with each hold.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Owner"]


@dataclass(frozen=True, slots=True)
class Owner:
    """Who holds a hold: a process (pid + its kernel start time, to survive pid reuse) and one
    opened store in it (``boot``, fresh per ``Store.open``)."""

    pid: int
    start: str
    boot: str

    @classmethod
    def current(cls) -> Owner:
        pid = os.getpid()
        return cls(pid, _process_start(pid), uuid.uuid4().hex)

    def is_gone(self, pid: int, start: str, boot: str) -> bool:
        """True when a hold's owner can no longer settle it: an earlier store of this very pid
        (this process's past, or a dead process whose pid we reuse), or a process that no longer runs."""
        if pid == self.pid:
            return boot != self.boot
        return not _alive(pid, start)


def _proc_stat(pid: int) -> list[str] | None:
    """/proc/<pid>/stat fields from the state on (Linux), or None when unavailable."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None
    return fields if len(fields) > 19 else None


def _process_start(pid: int) -> str:
    """The process's start time in clock ticks since boot, or '' when unknown."""
    stat = _proc_stat(pid)
    return stat[19] if stat else ""


def _alive(pid: int, start: str) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by another user
    stat = _proc_stat(pid)
    if stat is None:
        return True  # no /proc: trust the signal check
    # A zombie has finished its work; another start time means the pid was recycled.
    return stat[0] != "Z" and (not start or stat[19] == start)
