"""The gateway's log handler: one write per event-loop iteration, nothing lost, order kept; and its set-up."""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import re
import threading
import weakref
from collections.abc import Iterator

import orjson
import pytest

from relayproxy.telemetry.accesslog import REDACTED, RedactingFilter, RedactingFormatter, access_line
from relayproxy.telemetry.logsetup import BatchingStreamHandler, configure_logging

CANARY_KEY = "rp_" + "Q7x" * 10 + "zz"


class Recording(io.StringIO):
    """A stream that remembers each write call."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[str] = []

    def write(self, s: str) -> int:
        self.writes.append(s)
        return super().write(s)


Setup = tuple[logging.Logger, BatchingStreamHandler, Recording]


@pytest.fixture
def batching() -> Iterator[Setup]:
    stream = Recording()
    handler = BatchingStreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logger = logging.getLogger(f"test.loghandler.{id(stream)}")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    yield logger, handler, stream
    logger.removeHandler(handler)
    handler.close()


def test_without_a_running_loop_each_line_goes_out_at_once(batching: Setup) -> None:
    logger, _, stream = batching
    logger.info("one")
    assert stream.getvalue() == "INFO one\n"
    logger.info("two")
    assert stream.writes == ["INFO one\n", "INFO two\n"]


def test_in_a_loop_the_lines_of_one_iteration_go_out_in_one_write(batching: Setup) -> None:
    logger, _, stream = batching

    async def main() -> None:
        for i in range(3):
            logger.info("line %d", i)
        assert stream.writes == []
        await asyncio.sleep(0)
        assert stream.writes == ["INFO line 0\nINFO line 1\nINFO line 2\n"]
        logger.info("next")
        await asyncio.sleep(0)
        assert stream.writes[1:] == ["INFO next\n"]

    asyncio.run(main())


def test_an_error_goes_out_at_once_after_the_lines_before_it(batching: Setup) -> None:
    logger, _, stream = batching

    async def main() -> None:
        logger.info("before")
        logger.error("boom")
        assert stream.writes == ["INFO before\nERROR boom\n"]

    asyncio.run(main())


def test_a_full_batch_goes_out_at_once(batching: Setup) -> None:
    logger, handler, stream = batching
    handler.max_lines = 3

    async def main() -> None:
        for i in range(4):
            logger.info("%d", i)
        assert stream.writes == ["INFO 0\nINFO 1\nINFO 2\n"]
        await asyncio.sleep(0)
        assert stream.writes[1:] == ["INFO 3\n"]

    asyncio.run(main())


def test_a_line_from_another_thread_keeps_the_order(batching: Setup) -> None:
    logger, _, stream = batching

    async def main() -> None:
        logger.info("loop first")
        thread = threading.Thread(target=logger.info, args=("from a thread",))
        thread.start()
        thread.join()
        assert stream.getvalue() == "INFO loop first\nINFO from a thread\n"
        logger.info("loop again")
        await asyncio.sleep(0)

    asyncio.run(main())
    assert stream.getvalue().splitlines() == ["INFO loop first", "INFO from a thread", "INFO loop again"]


def loop_closed_with_lines_kept(logger: logging.Logger) -> None:
    """Log in a loop that stops, and is closed, before running the flush it scheduled."""
    loop = asyncio.new_event_loop()
    try:
        loop.call_soon(logger.info, "last words")
        loop.call_soon(loop.stop)  # the flush is scheduled after this: the loop stops before it
        loop.run_forever()
    finally:
        loop.close()


def test_lines_kept_by_a_closed_loop_go_out_first_in_the_next_loop(batching: Setup) -> None:
    logger, _, stream = batching
    loop_closed_with_lines_kept(logger)
    assert stream.writes == []  # the loop closed before its next iteration

    async def main() -> None:
        logger.info("new loop")
        await asyncio.sleep(0)

    asyncio.run(main())
    assert stream.writes == ["INFO last words\nINFO new loop\n"]


def test_close_and_shutdown_write_what_is_kept(batching: Setup) -> None:
    logger, handler, stream = batching
    loop_closed_with_lines_kept(logger)
    handler.close()
    assert stream.getvalue() == "INFO last words\n"

    other = Recording()
    second = BatchingStreamHandler(other)
    logger.addHandler(second)
    try:
        loop_closed_with_lines_kept(logger)
        assert other.getvalue() == ""
        logging.shutdown([weakref.ref(second)])  # what the interpreter runs at exit
        assert other.getvalue() == "last words\n"  # no formatter: the message alone
    finally:
        logger.removeHandler(second)


def test_a_failing_write_is_reported_not_raised_in_the_loop(
    batching: Setup, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    logger, _, stream = batching
    errors: list[dict[str, object]] = []

    def broken(s: str) -> int:
        raise OSError("disk full")

    async def main() -> None:
        asyncio.get_running_loop().set_exception_handler(lambda loop, ctx: errors.append(ctx))
        monkeypatch.setattr(stream, "write", broken)
        logger.info("lost")
        await asyncio.sleep(0)
        await asyncio.sleep(0)

    asyncio.run(main())
    assert errors == []
    assert "OSError: disk full" in capsys.readouterr().err  # logging's own "--- Logging error ---" report


@contextlib.contextmanager
def fresh_root() -> Iterator[logging.Logger]:
    """The root logger without handlers (pytest's own are back after); the switches are restored too."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    switches = (logging._srcfile, logging.logThreads, logging.logProcesses, logging.logMultiprocessing)
    root.handlers.clear()
    try:
        yield root
    finally:
        for handler in root.handlers:
            handler.close()
        root.handlers[:] = handlers
        root.setLevel(level)
        logging._srcfile, logging.logThreads, logging.logProcesses, logging.logMultiprocessing = switches


def test_configure_logging_gives_redacted_batched_lines_in_the_gateway_format() -> None:
    stream = io.StringIO()
    line = access_line(
        None, ts="t", method="GET", path="/v1/models", status=200, duration_ms=1, client=None, request_id="req_1"
    )

    async def main() -> None:
        logging.getLogger("relayproxy.access").info(line)
        logging.getLogger("relayproxy.test").warning("upstream key %s", CANARY_KEY)
        logging.getLogger("relayproxy.test").debug("below the level")
        await asyncio.sleep(0)

    with fresh_root() as root:
        configure_logging(stream, "%(asctime)s %(levelname)s %(message)s")
        (handler,) = root.handlers
        assert isinstance(handler, BatchingStreamHandler)
        assert isinstance(handler.formatter, RedactingFormatter)
        assert any(isinstance(f, RedactingFilter) for f in handler.filters)
        assert root.level == logging.INFO
        asyncio.run(main())
    first, second = stream.getvalue().splitlines()
    stamp = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}"
    assert first == str(line)  # the access line is its JSON alone: nothing before the `{` (INTERFACE.md "Logs")
    assert orjson.loads(first)["path"] == "/v1/models"
    assert re.fullmatch(stamp + f" WARNING upstream key {re.escape(REDACTED)}", second)
