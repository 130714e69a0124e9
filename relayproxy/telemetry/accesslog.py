"""Access-log lines and log redaction: keys, secrets and prompts never reach a log.

Two defences, both needed:
- ``access_line`` builds each access-log line from a fixed whitelist of fields, so nothing from
  headers, bodies or the query string (which may hold ``?key=``) can reach it by accident;
- ``RedactingFilter`` / ``RedactingFormatter`` rewrite every other log record, tracebacks
  included, so a secret that ends up in an exception message or a debug format string is
  replaced by ``[REDACTED]``: no log line may carry an API key, a bearer token or a Stripe secret,
  whichever logger or format string wrote it.

An access line is redacted once, where it is built; the filter and the formatter recognise that
very string object and do not scan it again. ``logsetup.configure_logging`` puts them to work.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Mapping
from types import TracebackType
from typing import Any, Literal, TypeAlias

import orjson

from relayproxy.records import UsageRecord

__all__ = [
    "ACCESS_LOGGER",
    "REDACTED",
    "AccessJsonFormatter",
    "RedactingFilter",
    "RedactingFormatter",
    "access_line",
    "install_redaction",
    "redact",
]

REDACTED = "[REDACTED]"

_ExcInfo: TypeAlias = tuple[type[BaseException], BaseException, TracebackType | None] | tuple[None, None, None]

# Header or parameter names whose value is a credential, followed by the separator forms seen in
# logs: "name: v" (raw header), "name=v", "'name': 'v'" (dict repr), "(b'name', b'v')" (h11 list).
_SEP = r"""((?>["']?\s*[:=,]\s*(?:b(?=["']))?["']?))(?!\[REDACTED\])"""
_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # The whole value up to a quote or line end: "Basic <b64>" and "Bearer <token>" both contain a space.
    (re.compile(r"(?i)\b((?:proxy-)?authorization)" + _SEP + r"""[^"'\r\n]+"""), rf"\1\2{REDACTED}"),
    (re.compile(r"(?i)\b(x-goog-api-key|x-api-key|api[-_]key)" + _SEP + r"""[^\s"'&,;)}\]]+"""), rf"\1\2{REDACTED}"),
    (re.compile(r"(?i)([?&](?:key|api[-_]key|access_token|token)=)(?!\[REDACTED\])[^&\s#\"']+"), rf"\1{REDACTED}"),
    (re.compile(r"""(?i)\bBearer\s+(?!\[REDACTED\])[^\s"',;]+"""), f"Bearer {REDACTED}"),
    (re.compile(r"rp_[A-Za-z0-9_]{16,}"), REDACTED),  # relayproxy keys: rp_ + 32 base62
    (re.compile(r"\bsk-[A-Za-z0-9_\-]{16,}"), REDACTED),  # OpenAI sk-…/sk-proj-…, Anthropic sk-ant-…
    (re.compile(r"\b(?:sk|rk)_(?:live|test)_[A-Za-z0-9]{8,}"), REDACTED),  # Stripe secret / restricted
    (re.compile(r"\bwhsec_[A-Za-z0-9+/=_\-]{8,}"), REDACTED),  # Stripe webhook signing secret
    (re.compile(r"AIza[0-9A-Za-z_\-]{35}"), REDACTED),  # Google API keys
)


# Every pattern above needs one of these markers (case-insensitive: a superset), so one scan
# clears the usual text without running the nine patterns (their cost: bench/README.md).
_MARKERS = re.compile(r"(?i)authorization|api[-_]key|key=|token=|bearer|rp_|sk-|sk_|rk_|whsec_|aiza")


def _may_hold_secret(text: str) -> bool:
    """``_MARKERS.search(text) is not None``, computed faster.

    On ASCII text, lower-casing and then looking for each marker as a substring finds exactly what
    the case-insensitive regex finds, much faster (the regex tries every alternative at every
    position; figures in bench/README.md). Other text keeps the regex, whose Unicode
    case folding also matches e.g. the long s (U+017F) as "s" and the dotted capital I (U+0130) as
    "i", where ``lower`` does not.
    """
    if not text.isascii():
        return _MARKERS.search(text) is not None
    low = text.lower()
    return (
        "authorization" in low
        or "api-key" in low
        or "api_key" in low
        or "key=" in low
        or "token=" in low
        or "bearer" in low
        or "rp_" in low
        or "sk-" in low
        or "sk_" in low
        or "rk_" in low
        or "whsec_" in low
        or "aiza" in low
    )


def redact(text: str) -> str:
    """``text`` with every credential-looking span replaced by ``[REDACTED]``."""
    if not _may_hold_secret(text):
        return text
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def _text(value: str | None) -> str | None:
    if value is None:
        return None
    value = redact(value)
    # orjson refuses lone surrogates; an access line must never fail because of what a client sent.
    return value if value.isascii() else value.encode("utf-8", "backslashreplace").decode("utf-8")


# The access line access_line built last. It is redacted already, so the filter and formatter let
# exactly this object through without scanning it again (the call shape is always
# ``access.info("%s", access_line(...))``, logged at once). An identity check cannot be met by any
# other string; under threads a line built in between only costs the other line a rescan.
_last_line: str | None = None


def access_line(
    rec: UsageRecord | None,
    *,
    ts: str,
    method: str,
    path: str,
    status: int,
    duration_ms: int,
    client: str | None,
    request_id: str,
    protocol: str | None = None,
) -> str:
    """One compact JSON access-log line from whitelisted fields only.

    ``ts`` (ISO-8601 UTC) is used when there is no usage record; with one, its ``created_at`` is.
    ``path`` loses any query string here as well, whatever the caller passed: ``?key=`` is a
    credential. ``protocol`` is the inbound protocol when known but no record was made.
    """
    global _last_line
    path = path.partition("?")[0].partition("#")[0]
    line: dict[str, Any] = {
        "ts": rec.created_at if rec is not None else ts,
        "request_id": request_id,
        "method": method,
        "path": path,
        "status": status,
        "duration_ms": duration_ms,
        "client": client,
        "client_protocol": (rec.client_protocol if rec is not None else None) or protocol,
    }
    if rec is not None:
        line.update(_usage_fields(rec))
    # Every string value is scanned, whatever its source, in one pass: when none holds a marker,
    # redacting them one by one would change nothing, so the line is built from them as they are.
    # The separator is no marker character, so no marker spans two values; the keys hold none
    # (tests check). Otherwise, or for text orjson refuses (lone surrogates), field by field.
    values = "\n".join([v for v in line.values() if isinstance(v, str)])
    text: str | None = None
    if not _may_hold_secret(values):
        try:
            text = orjson.dumps(line).decode("utf-8")
        except orjson.JSONEncodeError:
            text = None
    if text is None:
        text = orjson.dumps({k: _text(v) if isinstance(v, str) else v for k, v in line.items()}).decode("utf-8")
    _last_line = text
    return text


def _usage_fields(rec: UsageRecord) -> dict[str, Any]:
    return {
        "account": rec.account,
        "key_id": rec.key_id,  # the public id (key_…), never the secret
        "model": rec.model,
        "provider": rec.provider,
        "upstream_protocol": rec.upstream_protocol,
        "stream": rec.stream,
        "outcome": str(rec.outcome),
        "billed": rec.billed,
        "reason": rec.reason,
        "input_tokens": rec.input_tokens,
        "cached_input_tokens": rec.cached_input_tokens,
        "output_tokens": rec.output_tokens,
        "reasoning_tokens": rec.reasoning_tokens,
        "cost_microusd": rec.cost_microusd,
    }


def _safe_line(record: logging.LogRecord) -> str | None:
    """The record's message when it is the access line ``access_line`` built (already redacted)."""
    line = _last_line
    if line is None:
        return None
    msg, args = record.msg, record.args
    if msg is line and not args:  # after RedactingFilter
        return line
    if type(args) is tuple and len(args) == 1 and args[0] is line and type(msg) is str and msg == "%s":
        return line
    return None


_PLAIN = logging.Formatter()  # formats tracebacks for the filter, as a handler without a formatter would


class RedactingFilter(logging.Filter):
    """Redacts a record in place: its message (formatted with its args first), traceback and stack.

    Handler filters run before the handler's formatter, and the record object is shared by every
    handler, so once this has run no handler can see the secret, whatever formatter it uses.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        line = _safe_line(record)
        record.msg = line if line is not None else redact(_message(record))
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = _PLAIN.formatException(record.exc_info)
        if record.exc_text:
            # Also when a formatter of an earlier handler cached it unredacted on the record.
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


def _message(record: logging.LogRecord) -> str:
    try:
        return record.getMessage()
    # A filter runs outside Handler.emit's try/except (logging's handleError), so a bad format
    # string or a raising __str__ would otherwise crash the caller's log statement itself.
    except Exception as exc:  # noqa: BLE001
        raw = record.msg if isinstance(record.msg, str) else type(record.msg).__name__
        return f"{raw} [log message could not be formatted: {type(exc).__name__}]"


# Record attributes that logging itself fills from the code and the clock, never from a request:
# a %-format made of these and the message adds nothing that could need redacting.
_GENERATED_FIELDS = frozenset(
    {
        "asctime",
        "created",
        "filename",
        "funcName",
        "levelname",
        "levelno",
        "lineno",
        "message",
        "module",
        "msecs",
        "name",
        "pathname",
        "process",
        "processName",
        "relativeCreated",
        "thread",
        "threadName",
    }
)
_PERCENT_FIELD = re.compile(r"%\(([^)]*)\)")


class RedactingFormatter(logging.Formatter):
    """A formatter whose whole output, tracebacks included, goes through ``redact``.

    With ``inner``, it wraps that formatter (e.g. a JSON formatter) instead of formatting itself.
    The one exception: an access line from ``access_line`` (redacted when built), without traceback
    or stack, formatted by a plain ``logging.Formatter`` %-format of ``_GENERATED_FIELDS`` only.
    """

    def __init__(
        self,
        fmt: str | None = None,
        datefmt: str | None = None,
        style: Literal["%", "{", "$"] = "%",
        validate: bool = True,
        *,
        defaults: Mapping[str, Any] | None = None,
        inner: logging.Formatter | None = None,
    ) -> None:
        super().__init__(fmt, datefmt, style, validate, defaults=defaults)
        self.inner = inner
        self._checked: tuple[logging.Formatter, logging.PercentStyle] | None = None  # found plain
        self._time: tuple[int, str | None, object, str] | None = None  # second, datefmt, converter -> text

    def format(self, record: logging.LogRecord) -> str:
        text = self.inner.format(record) if self.inner is not None else super().format(record)
        if (
            not record.exc_info
            and not record.exc_text
            and not record.stack_info
            and _safe_line(record) is not None
            and self._plain()
        ):
            return text
        return redact(text)

    def _plain(self) -> bool:
        """Whether the formatting formatter is plain: its output is its %-format of generated fields."""
        fmtr = self.inner if self.inner is not None else self
        style = fmtr._style
        checked = self._checked
        if checked is not None and checked[0] is fmtr and checked[1] is style:
            return True
        if type(fmtr) not in (logging.Formatter, RedactingFormatter) or type(style) is not logging.PercentStyle:
            return False
        if not set(_PERCENT_FIELD.findall(style._fmt)) <= _GENERATED_FIELDS:
            return False
        self._checked = (fmtr, style)
        return True

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        # strftime once per second, not once per line; the milliseconds as logging.Formatter adds them.
        second, converter = math.floor(record.created), self.converter
        cached = self._time
        if cached is not None and cached[0] == second and cached[1] == datefmt and cached[2] is converter:
            stamp = cached[3]
        else:
            stamp = time.strftime(datefmt or self.default_time_format, converter(second))
            self._time = (second, datefmt, converter, stamp)
        if datefmt or not self.default_msec_format:
            return stamp
        return self.default_msec_format % (stamp, record.msecs)

    def formatException(self, ei: _ExcInfo) -> str:
        # Redacted before Formatter.format caches it in record.exc_text for later handlers.
        return redact(super().formatException(ei))

    def formatStack(self, stack_info: str) -> str:
        return redact(super().formatStack(stack_info))


#: The logger of the access log (INTERFACE.md "Logs": one JSON object per line, nothing before the ``{``).
ACCESS_LOGGER = "relayproxy.access"


class AccessJsonFormatter(RedactingFormatter):
    """The gateway's formatter: ``fmt`` for every log line except the access log's, which is its JSON alone.

    A record of ``ACCESS_LOGGER`` comes out as its message only, with no time or level before the
    ``{``, so the access lines of stderr read as JSON lines; still redacted unless it is the very
    line ``access_line`` built. Other records, and an access record with a traceback, as ever.
    Under ``--workers`` each access object starts with ``"worker": N`` (the worker that served
    it), as the text lines carry ``[worker N pid P]``.
    """

    def __init__(self, fmt: str, *, worker: int | None = None) -> None:
        super().__init__(fmt)
        self._worker_field = f'{{"worker":{worker},' if worker is not None else None

    def format(self, record: logging.LogRecord) -> str:
        if record.name != ACCESS_LOGGER or record.exc_info or record.exc_text or record.stack_info:
            return super().format(record)
        line = _safe_line(record)
        if line is None:
            return redact(_message(record))
        if self._worker_field is not None and line.startswith("{") and len(line) > 2:
            return self._worker_field + line[1:]
        return line


def install_redaction(logger: logging.Logger | None = None) -> None:
    """Add a ``RedactingFilter`` and a redacting formatter to the handlers of ``logger`` (default: root).

    Idempotent. Call it after logging is configured: handlers added later are not covered. For the
    root logger, ``logging.lastResort`` (used while the root has no handlers) is covered too.
    """
    target = logger if logger is not None else logging.getLogger()
    handlers = list(target.handlers)
    if target is logging.getLogger() and logging.lastResort is not None:
        handlers.append(logging.lastResort)
    for handler in handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())
        if not isinstance(handler.formatter, RedactingFormatter):
            handler.setFormatter(RedactingFormatter(inner=handler.formatter))
