"""Settlements the PostgreSQL store could not commit because the database was unreachable.

A request admitted before an outage still finishes; its settlement (usage record, charge and
hold release, one transaction keyed by the request id) is parked here, in memory, and applied
when the database answers again. When the gateway stops with settlements still parked, they are
appended to the settlement journal (``[server] settlement_journal``, one JSON object a line,
fsynced) and applied by the next store that opens with that journal. Applying one twice changes
nothing (a settlement is keyed by its request id: the replay finds its usage record and stops),
so a crash between applying and emptying the journal cannot double-charge. When the outage
outlasted the lease and another machine's reaper released the hold meanwhile, the settlement
still charges, once, within the credit left (pg_settle.py).

Several processes may share one journal file (workers): every read, append and truncation holds
an exclusive ``flock`` on it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from relayproxy.records import UsageRecord

__all__ = ["Backlog", "Parked", "empty", "locked_journal", "read_lines"]


@dataclass(frozen=True, slots=True)
class Parked:
    """One settlement waiting for the database: what ``settle`` was asked, and when."""

    rec: UsageRecord
    charge_microusd: int
    at: str  # the ledger entries' timestamp: when the request ended, not when it was applied

    def to_line(self) -> bytes:
        body = {"record": dataclasses.asdict(self.rec), "charge_microusd": self.charge_microusd, "at": self.at}
        return json.dumps(body, separators=(",", ":")).encode() + b"\n"

    @classmethod
    def from_line(cls, line: bytes) -> Parked:
        body = json.loads(line)
        return cls(UsageRecord(**body["record"]), int(body["charge_microusd"]), str(body["at"]))


class Backlog:
    """The parked settlements of one store, oldest first."""

    def __init__(self) -> None:
        self._items: deque[Parked] = deque()

    def __len__(self) -> int:
        return len(self._items)

    def park(self, item: Parked) -> None:
        self._items.append(item)

    def oldest(self) -> Parked | None:
        return self._items[0] if self._items else None

    def applied(self, item: Parked) -> None:
        if self._items and self._items[0] is item:
            self._items.popleft()

    def write_journal(self, path: Path) -> int:
        """Append every parked settlement to the journal at ``path`` (fsynced); returns how many."""
        if not self._items:
            return 0
        with locked_journal(path) as f:
            f.seek(0, os.SEEK_END)
            f.write(b"".join(item.to_line() for item in self._items))
            f.flush()
            os.fsync(f.fileno())
        written = len(self._items)
        self._items.clear()
        return written


@contextlib.contextmanager
def locked_journal(path: Path) -> Iterator[IO[bytes]]:
    """The journal file (created when missing), opened for reading and writing under an exclusive lock."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    with os.fdopen(fd, "r+b") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield f
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def read_lines(f: IO[bytes]) -> list[Parked]:
    """Every complete entry of an open journal (a torn last line, from a crash mid-write, is skipped:
    its settlement was never acknowledged, and the hold it would close is released by the sweep)."""
    f.seek(0)
    return [Parked.from_line(line) for line in f.read().split(b"\n") if line.strip() and _whole(line)]


def _whole(line: bytes) -> bool:
    try:
        json.loads(line)
    except ValueError:
        return False
    return True


def empty(f: IO[bytes]) -> None:
    f.seek(0)
    f.truncate()
    f.flush()
    os.fsync(f.fileno())
