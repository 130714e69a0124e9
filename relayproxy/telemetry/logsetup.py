"""The gateway's log output: redacted lines, batched per event-loop iteration.

``configure_logging`` sets up the root logger with a ``BatchingStreamHandler`` (the lines of one
event-loop iteration go out in one write) and the redaction of ``accesslog``.
"""

from __future__ import annotations

import asyncio
import logging
from typing import IO

from relayproxy.telemetry.accesslog import AccessJsonFormatter, install_redaction

__all__ = ["BatchingStreamHandler", "configure_logging"]


class BatchingStreamHandler(logging.StreamHandler[IO[str]]):
    """A ``StreamHandler`` that writes the lines of one event-loop iteration with one write and flush.

    In a running event loop a line is kept until the loop runs the flush it schedules for its next
    iteration (``call_soon``); every other line goes out at once, with any kept before it, so the
    order is the order of logging. Also at once: a record at ERROR or above, and the line that
    fills the batch to ``max_lines``. ``flush`` and ``close`` write what is kept, and
    ``logging.shutdown`` (run at interpreter exit) flushes and closes every handler.
    """

    def __init__(self, stream: IO[str], max_lines: int = 256) -> None:
        super().__init__(stream)
        self.max_lines = max_lines
        self._lines: list[str] = []
        self._scheduled_on: asyncio.AbstractEventLoop | None = None  # the loop that will flush

    def emit(self, record: logging.LogRecord) -> None:  # called with the handler's lock held
        try:
            self._lines.append(self.format(record) + self.terminator)
            if record.levelno < logging.ERROR and len(self._lines) < self.max_lines:
                try:
                    loop = asyncio.get_running_loop()
                except RuntimeError:
                    pass
                else:
                    # A flush scheduled on a loop that closed before running it is rescheduled here.
                    if self._scheduled_on is not loop:
                        loop.call_soon(self._flush_soon)
                        self._scheduled_on = loop
                    return
            self._write()
        except RecursionError:  # as logging.StreamHandler.emit
            raise
        except Exception:  # noqa: BLE001
            self.handleError(record)

    def flush(self) -> None:
        self.acquire()
        try:
            self._write()
        finally:
            self.release()

    def close(self) -> None:
        self.flush()
        super().close()

    def _write(self) -> None:
        lines, self._lines = self._lines, []
        stream = self.stream
        if stream:
            if lines:
                stream.write("".join(lines))
            if hasattr(stream, "flush"):
                stream.flush()

    def _flush_soon(self) -> None:
        self.acquire()
        try:
            self._scheduled_on = None
            self._write()
        except Exception:  # noqa: BLE001 - in a loop callback: report as logging does, never raise
            self.handleError(logging.makeLogRecord({"msg": "writing buffered log lines"}))
        finally:
            self.release()


def configure_logging(stream: IO[str], fmt: str, level: int = logging.INFO, *, worker: int | None = None) -> None:
    """The gateway's log: ``fmt`` lines on ``stream``, batched per event-loop iteration, redacted.

    Access-log lines are their JSON object alone (``AccessJsonFormatter``), the others ``fmt``.

    As ``logging.basicConfig``, it adds no handler when the root logger has some already; those
    get redaction as ever. Records no longer carry what the gateway's formats never print (the
    calling function and line, thread and process names: the switches of the logging manual's
    "Optimization" section), which saves a stack walk and some look-ups per record.
    """
    handler = BatchingStreamHandler(stream)
    handler.setFormatter(AccessJsonFormatter(fmt, worker=worker))
    logging.basicConfig(level=level, handlers=[handler])
    install_redaction()  # keys, secrets and bearer tokens never reach a log line
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
