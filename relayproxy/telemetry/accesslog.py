"""Access-log lines and log redaction: keys, secrets and prompts never reach a log.

Two defences, both needed:
- ``access_line`` makes each access-log message from a fixed whitelist of fields, so nothing from
  headers, bodies or the query string (which may hold ``?key=``) can reach it by accident; its text
  is their JSON with every string value passed through ``redact``;
- ``RedactingFilter`` / ``RedactingFormatter`` pass every other log record, tracebacks included,
  through ``redact``, so a secret that ends up in an exception message or a debug format string is
  replaced by ``[REDACTED]``: no log line may carry an API key, a bearer token or a Stripe secret,
  whichever logger or format string wrote it.

An ``AccessLine`` is redacted value by value when it is rendered, never as a whole: a pattern run
over the whole JSON could take the next key for a credential's value (``"…api_key","client"``).
``logsetup.configure_logging`` puts them to work.
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
    "AccessLine",
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


class AccessLine:
    """One access-log message: whitelisted fields; ``str()`` is their JSON, each text value redacted.

    Log it as the message itself (``access.info(line)``). It redacts itself, so the filter and the
    gateway's formatter print it as it is; any other formatter redacts its whole output as ever.
    """

    __slots__ = ("_fields",)

    def __init__(self, fields: dict[str, Any]) -> None:
        self._fields = fields

    def __str__(self) -> str:
        return _render(self._fields)

    def __repr__(self) -> str:
        return f"AccessLine({self})"


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
) -> AccessLine:
    """One compact JSON access-log line from whitelisted fields only.

    ``ts`` (ISO-8601 UTC) is used when there is no usage record; with one, its ``created_at`` is.
    ``path`` loses any query string here as well, whatever the caller passed: ``?key=`` is a
    credential. ``protocol`` is the inbound protocol when known but no record was made.
    """
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
    return AccessLine(line)


def _render(line: dict[str, Any]) -> str:
    """The JSON of ``line``, every string value through ``redact``.

    Every string value is scanned in one pass: when none holds a marker, redacting them one by one
    would change nothing, so the line is dumped as it is. The separator is no marker character, so
    no marker spans two values; the keys hold none (tests check). Otherwise, or for text orjson
    refuses (lone surrogates), field by field.
    """
    values = "\n".join([v for v in line.values() if isinstance(v, str)])
    if not _may_hold_secret(values):
        try:
            return orjson.dumps(line).decode("utf-8")
        except orjson.JSONEncodeError:
            pass
    return orjson.dumps({k: _text(v) if isinstance(v, str) else v for k, v in line.items()}).decode("utf-8")


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


_PLAIN = logging.Formatter()  # formats tracebacks for the filter, as a handler without a formatter would


class RedactingFilter(logging.Filter):
    """Redacts a record in place: its message (formatted with its args first), traceback and stack.

    Handler filters run before the handler's formatter, and the record object is shared by every
    handler, so once this has run no handler can see the secret, whatever formatter it uses.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if not _is_access_line(record):  # an AccessLine redacts itself, value by value
            record.msg = redact(_message(record))
            record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = _PLAIN.formatException(record.exc_info)
        if record.exc_text:
            # Also when a formatter of an earlier handler cached it unredacted on the record.
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


def _is_access_line(record: logging.LogRecord) -> bool:
    return isinstance(record.msg, AccessLine) and not record.args


def _message(record: logging.LogRecord) -> str:
    try:
        return record.getMessage()
    # A filter runs outside Handler.emit's try/except (logging's handleError), so a bad format
    # string or a raising __str__ would otherwise crash the caller's log statement itself.
    except Exception as exc:  # noqa: BLE001
        raw = record.msg if isinstance(record.msg, str) else type(record.msg).__name__
        return f"{raw} [log message could not be formatted: {type(exc).__name__}]"


class RedactingFormatter(logging.Formatter):
    """A formatter whose whole output, tracebacks included, goes through ``redact``.

    With ``inner``, it wraps that formatter (e.g. a JSON formatter) instead of formatting itself.
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
        self._time: tuple[int, str | None, object, str] | None = None  # second, datefmt, converter -> text

    def format(self, record: logging.LogRecord) -> str:
        return redact(self.inner.format(record) if self.inner is not None else super().format(record))

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
    ``{``, so the access lines of stderr read as JSON lines: an ``AccessLine`` as it renders itself,
    any other message redacted. Other records, and an access record with a traceback, as ever.
    Under ``--workers`` each access object starts with ``"worker": N`` (the worker that served
    it), as the text lines carry ``[worker N pid P]``.
    """

    def __init__(self, fmt: str, *, worker: int | None = None) -> None:
        super().__init__(fmt)
        self._worker_field = f'{{"worker":{worker},' if worker is not None else None

    def format(self, record: logging.LogRecord) -> str:
        if record.name != ACCESS_LOGGER or record.exc_info or record.exc_text or record.stack_info:
            return super().format(record)
        if not _is_access_line(record):
            return redact(_message(record))
        line = str(record.msg)
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
