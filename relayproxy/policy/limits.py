"""Per-key admission control: a cap on requests in flight and a sliding-window requests-per-minute cap.

Theory of operation
-------------------
``KeyLimiter.try_acquire(key_id, now_s)`` decides at once and never waits: it returns an
``Admitted`` token or a ``Denied(reason, retry_after_s)``. The caller turns a denial into a 429
with ``Retry-After`` before any hold or upstream call, and hands the token back with
``release(token)`` when the request ends, however it ends. A token releases once; later
releases are no-ops, so a ``finally`` that runs after an earlier explicit release is harmless.

Per key we keep ``in_flight`` (admitted, not yet released) and ``window``: the admission times of
the last ``WINDOW_S`` seconds, oldest first, at most ``per_key_rpm`` of them (a timestamp ``t`` is
in the window while ``t + WINDOW_S > now_s``). Denied requests are not recorded, so a client
hammering a full key does not push its own retry time further out.

Forgetting idle keys (bounded memory): a key whose ``in_flight`` drops to 0 is deleted at once if
its window is empty, or else queued in ``_idle`` with the time its newest admission leaves the
window. Each ``try_acquire`` first pops the due entries and deletes the keys that are still idle
with an empty window. A popped entry whose key is in use again is simply dropped: that key's next
release to 0 queues a fresh one. Every entry is pushed once and popped once, so all of this is
O(1) amortised, and an idle key is forgotten at most ``WINDOW_S`` after its last release.

Time is passed in (``time.monotonic()`` in production); nothing here reads a clock. There are no
locks: the gateway calls this from a single event loop, and no method awaits.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from enum import StrEnum

__all__ = ["WINDOW_S", "Admission", "Admitted", "Denied", "DenyReason", "KeyLimiter"]

WINDOW_S = 60.0
_MAX_WAIT_S = math.ceil(WINDOW_S)


class DenyReason(StrEnum):
    CONCURRENCY = "concurrency"
    RPM = "rpm"


@dataclass(frozen=True, slots=True)
class Denied:
    """Over a limit: answer 429 with ``Retry-After: retry_after_s`` (always >= 1)."""

    reason: DenyReason
    retry_after_s: int


class Admitted:
    """Proof of one admission, to be given back with ``KeyLimiter.release`` exactly once.

    The token remembers whether it was released, so releasing twice cannot free someone else's
    slot, and which limiter admitted it, so a token that outlives a limiter (a config reload
    builds a new one) is released into its own limiter rather than corrupting the new one's counts.
    """

    __slots__ = ("_limiter", "_released", "key_id")

    def __init__(self, limiter: KeyLimiter, key_id: str) -> None:
        self._limiter = limiter
        self._released = False
        self.key_id = key_id

    @property
    def released(self) -> bool:
        return self._released

    def __repr__(self) -> str:
        return f"Admitted(key_id={self.key_id!r}, released={self._released})"


Admission = Admitted | Denied


@dataclass(slots=True)
class _KeyState:
    window: deque[float]  # admission times still inside WINDOW_S, oldest first; unused when rpm is 0
    in_flight: int = 0


class KeyLimiter:
    """Admission control per API key; 0 means unlimited for either cap."""

    def __init__(self, per_key_concurrency: int, per_key_rpm: int) -> None:
        if per_key_concurrency < 0 or per_key_rpm < 0:
            raise ValueError(
                f"per_key_concurrency and per_key_rpm must be >= 0 (0 = unlimited), "
                f"got {per_key_concurrency} and {per_key_rpm}"
            )
        self.per_key_concurrency = per_key_concurrency
        self.per_key_rpm = per_key_rpm
        self._keys: dict[str, _KeyState] = {}
        self._idle: deque[tuple[float, str]] = deque()  # (when the key's window empties, key), push order

    def try_acquire(self, key_id: str, now_s: float) -> Admission:
        """Admit one request for ``key_id`` now, or say which cap refused it and when to retry."""
        self.sweep(now_s)
        state = self._keys.get(key_id)
        if state is None:
            state = self._keys[key_id] = _KeyState(deque(maxlen=self.per_key_rpm or None))
        denied = self._check(state, now_s)
        if denied is not None:
            return denied
        state.in_flight += 1
        if self.per_key_rpm:
            window = state.window
            # A clock that steps back must not unsort the window: its head decides retry_after.
            window.append(max(now_s, window[-1]) if window else now_s)
        return Admitted(self, key_id)

    def release(self, token: Admitted) -> None:
        """End the request ``token`` admitted; a second release of the same token does nothing."""
        if token._released:
            return
        token._released = True
        token._limiter._release_one(token.key_id)

    def sweep(self, now_s: float) -> None:
        """Forget keys that are idle with an empty window (``try_acquire`` calls this itself)."""
        idle = self._idle
        while idle and idle[0][0] <= now_s:
            _, key_id = idle.popleft()
            state = self._keys.get(key_id)
            if state is not None and state.in_flight == 0:
                _expire(state.window, now_s)
                if not state.window:
                    del self._keys[key_id]

    def in_flight(self, key_id: str) -> int:
        state = self._keys.get(key_id)
        return state.in_flight if state is not None else 0

    @property
    def tracked_keys(self) -> int:
        """How many keys have state (for metrics and the bounded-memory test)."""
        return len(self._keys)

    def _check(self, state: _KeyState, now_s: float) -> Denied | None:
        # rpm first: when both caps refuse, only the rpm wait is an honest Retry-After
        # (retrying after 1 s would just be refused again until the window moves).
        if self.per_key_rpm:
            window = state.window
            _expire(window, now_s)
            if len(window) >= self.per_key_rpm:
                wait_s = math.ceil(window[0] + WINDOW_S - now_s)
                return Denied(DenyReason.RPM, min(max(1, wait_s), _MAX_WAIT_S))  # > 60 only if the clock stepped back
        if self.per_key_concurrency and state.in_flight >= self.per_key_concurrency:
            return Denied(DenyReason.CONCURRENCY, 1)
        return None

    def _release_one(self, key_id: str) -> None:
        state = self._keys[key_id]  # present: a live token means in_flight >= 1, and such keys are kept
        state.in_flight -= 1
        if state.in_flight:
            return
        if state.window:
            self._idle.append((state.window[-1] + WINDOW_S, key_id))
        else:
            del self._keys[key_id]


def _expire(window: deque[float], now_s: float) -> None:
    # Same expression as the idle-queue due time (t + WINDOW_S), so float rounding cannot make
    # sweep() find a due key whose window still looks non-empty, which would leak its state.
    while window and window[0] + WINDOW_S <= now_s:
        window.popleft()
