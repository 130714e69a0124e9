"""Request ids (``x-request-id``, the ledger's and usage table's keys): unique, time-ordered."""

from __future__ import annotations

import re
import time

from relayproxy.gateway.exchange import new_request_id


def test_request_ids_are_unique_and_well_formed() -> None:
    ids = [new_request_id() for _ in range(20_000)]
    assert len(set(ids)) == len(ids)
    assert all(re.fullmatch(r"req_[0-9a-f]{24}", rid) for rid in ids)


def test_later_request_ids_sort_later() -> None:
    """So the indexes on them grow at their right edge instead of at random pages."""
    earlier = [new_request_id() for _ in range(100)]
    time.sleep(0.002)
    later = [new_request_id() for _ in range(100)]
    assert max(earlier) < min(later)
    stamp = int(later[0][4:16], 16)
    assert abs(stamp - time.time_ns() // 1_000_000) < 60_000  # the first 12 digits are the time in ms
