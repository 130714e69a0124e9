"""Access lines carry only whitelisted fields; log redaction covers messages, args and tracebacks."""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from relayproxy.records import Outcome, UsageRecord
from relayproxy.telemetry import accesslog
from relayproxy.telemetry.accesslog import (
    ACCESS_LOGGER,
    REDACTED,
    AccessJsonFormatter,
    RedactingFilter,
    RedactingFormatter,
    access_line,
    install_redaction,
    redact,
)

CANARY_KEY = "rp_" + "Q7x" * 10 + "zz"  # rp_ + 32 base62, as keys.new_key makes them
CANARY_PROMPT = "CANARY-7f3e"
CANARY_PROVIDER = "sk-proj-" + "c4n4ry" * 5
CANARY_WHSEC = "whsec_" + "W3bh00k" * 5
SECRETS = {
    "relayproxy key": CANARY_KEY,
    "bearer token": "Bearer opaque.token-value_123",
    "openai key": CANARY_PROVIDER,
    "anthropic key": "sk-ant-api03-" + "a1B2" * 10,
    "stripe live secret": "sk_live_" + "51Hx" * 6,
    "stripe test secret": "sk_test_" + "51Hx" * 6,
    "stripe restricted": "rk_live_" + "51Hx" * 6,
    "webhook secret": CANARY_WHSEC,
    "google api key": "AIza" + "SyD-" + "x" * 31,
    "x-goog-api-key header": "x-goog-api-key: opaquegooglevalue",
    "x-api-key dict repr": "{'x-api-key': 'opaqueanthropicvalue'}",
    "h11 header list": "[(b'x-goog-api-key', b'opaquegooglevalue')]",
    "authorization basic": "Authorization: Basic dXNlcjpwYXNzd29yZA==",
    "query key": "GET /v1beta/models/m:generateContent?alt=sse&key=opaquequeryvalue",
}
# The part of each sample that must disappear (the header name or scheme may stay).
SECRET_PARTS = {
    "bearer token": "opaque.token-value_123",
    "x-goog-api-key header": "opaquegooglevalue",
    "x-api-key dict repr": "opaqueanthropicvalue",
    "h11 header list": "opaquegooglevalue",
    "authorization basic": "dXNlcjpwYXNzd29yZA==",
    "query key": "opaquequeryvalue",
}


Captured = tuple[logging.Logger, io.StringIO]


def secret_part(name: str) -> str:
    return SECRET_PARTS.get(name, SECRETS[name])


@dataclass
class LeakyRecord(UsageRecord):
    """A usage record that also carries things an access line must never copy."""

    api_key: str = CANARY_KEY
    prompt: str = CANARY_PROMPT
    headers: dict[str, str] = field(default_factory=lambda: {"authorization": f"Bearer {CANARY_KEY}"})


def full_record() -> UsageRecord:
    return LeakyRecord(
        request_id="req_1",
        created_at="2025-01-02T03:04:05.678Z",
        account="acme",
        key_id="key_0123456789ab",
        model="gpt-4o",
        provider="openai",
        client_protocol="gemini",
        upstream_protocol="openai",
        stream=True,
        outcome=Outcome.COMPLETED.value,
        http_status=200,
        input_tokens=11,
        cached_input_tokens=3,
        output_tokens=7,
        reasoning_tokens=2,
        cost_microusd=1234,
        billed=True,
        reason="",
        duration_ms=99,
    )


def line_for(rec: UsageRecord | None, path: str = "/v1beta/models/gpt-4o:streamGenerateContent") -> dict[str, object]:
    text = str(
        access_line(
            rec,
            ts="2025-01-02T03:04:06.000Z",
            method="POST",
            path=path,
            status=200,
            duration_ms=42,
            client="203.0.113.9",
            request_id="req_1",
            protocol="openai",
        )
    )
    assert "\n" not in text
    parsed = orjson.loads(text)
    assert isinstance(parsed, dict)
    return parsed


def test_access_line_whitelist_with_record() -> None:
    """Exactly the whitelisted fields, in a fixed order, taken from the record."""
    line = line_for(full_record())
    assert line == {
        "ts": "2025-01-02T03:04:05.678Z",
        "request_id": "req_1",
        "method": "POST",
        "path": "/v1beta/models/gpt-4o:streamGenerateContent",
        "status": 200,
        "duration_ms": 42,
        "client": "203.0.113.9",
        "client_protocol": "gemini",
        "account": "acme",
        "key_id": "key_0123456789ab",
        "model": "gpt-4o",
        "provider": "openai",
        "upstream_protocol": "openai",
        "stream": True,
        "outcome": "completed",
        "billed": True,
        "reason": "",
        "input_tokens": 11,
        "cached_input_tokens": 3,
        "output_tokens": 7,
        "reasoning_tokens": 2,
        "cost_microusd": 1234,
    }


def test_access_line_without_record() -> None:
    """Before a usage record exists (401, 404, 413...), the line has the request fields and passed-in ts."""
    assert line_for(None, path="/v1/models") == {
        "ts": "2025-01-02T03:04:06.000Z",
        "request_id": "req_1",
        "method": "POST",
        "path": "/v1/models",
        "status": 200,
        "duration_ms": 42,
        "client": "203.0.113.9",
        "client_protocol": "openai",
    }


def test_access_line_never_leaks_keys_prompts_or_query() -> None:
    """hardening.md cases 31/38: a canary key, a prompt and a ?key= query never reach the line."""
    rec = full_record()
    rec.reason = f"upstream said: bad key {CANARY_PROVIDER}"  # a secret that slipped into a logged field
    text = str(
        access_line(
            rec,
            ts="t",
            method="POST",
            path=f"/v1beta/models/m:generateContent?key={CANARY_KEY}&prompt={CANARY_PROMPT}",
            status=401,
            duration_ms=1,
            client=None,
            request_id="req_2",
        )
    )
    for canary in (CANARY_KEY, CANARY_PROMPT, CANARY_PROVIDER, "key=", "prompt", "Bearer", "?"):
        assert canary not in text
    assert orjson.loads(text)["path"] == "/v1beta/models/m:generateContent"
    assert orjson.loads(text)["reason"] == f"upstream said: bad key {REDACTED}"


def test_access_line_survives_undecodable_text() -> None:
    """Surrogate-escaped bytes from a client must not make the access line fail to encode."""
    rec = full_record()
    rec.model = "gpt\udcff"
    assert line_for(rec)["model"] == "gpt\\udcff"


@pytest.mark.parametrize("name", sorted(SECRETS))
def test_redact_each_pattern(name: str) -> None:
    text = f"before {SECRETS[name]} after"
    out = redact(text)
    assert secret_part(name) not in out
    assert REDACTED in out
    assert out.startswith("before ")
    assert redact(out) == out  # idempotent


@pytest.mark.parametrize(
    "text",
    [
        "key_id=key_0123456789ab model=gpt-4o status=200",
        "rp_short sk-learn skip_live_x whsec_ tokens=120 path=/v1/messages",
        "monkey=banana keyboard: qwerty",
    ],
)
def test_redact_leaves_ordinary_text_alone(text: str) -> None:
    assert redact(text) == text


@pytest.fixture
def captured() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    """A private logger with one handler using the redacting formatter and filter; yields (logger, stream)."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(RedactingFormatter("%(levelname)s %(message)s"))
    handler.addFilter(RedactingFilter())
    logger = logging.getLogger(f"test.accesslog.{id(stream)}")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    yield logger, stream
    logger.removeHandler(handler)


@pytest.mark.parametrize("name", sorted(SECRETS))
def test_secret_in_message_and_args_redacted(captured: Captured, name: str) -> None:
    logger, stream = captured
    logger.info("in message: " + SECRETS[name])
    logger.info("in args: %s and %r", SECRETS[name], {"k": SECRETS[name]})
    logger.warning("in dict args: %(v)s", {"v": SECRETS[name]})
    out = stream.getvalue()
    assert secret_part(name) not in out
    assert out.count(REDACTED) >= 4


def test_secret_in_traceback_redacted(captured: Captured) -> None:
    """A key in an exception message is redacted from the logged traceback too."""
    logger, stream = captured
    try:
        raise ValueError(f"bad key {CANARY_KEY} for {CANARY_WHSEC}")
    except ValueError:
        logger.exception("request failed for %s", CANARY_PROVIDER)
    out = stream.getvalue()
    assert "Traceback (most recent call last)" in out
    assert "ValueError: bad key [REDACTED] for [REDACTED]" in out
    for canary in (CANARY_KEY, CANARY_WHSEC, CANARY_PROVIDER):
        assert canary not in out


def test_formatter_alone_redacts_tracebacks() -> None:
    """Without the filter, RedactingFormatter still redacts message and exception text."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(RedactingFormatter())
    logger = logging.getLogger("test.accesslog.formatter-only")
    logger.propagate = False
    logger.addHandler(handler)
    try:
        try:
            raise KeyError(CANARY_KEY)
        except KeyError:
            logger.error("lookup %s", CANARY_KEY, exc_info=True, stack_info=True)
    finally:
        logger.removeHandler(handler)
    assert CANARY_KEY not in stream.getvalue()
    assert "KeyError" in stream.getvalue()


def test_filter_redacts_for_a_plain_formatter_handler() -> None:
    """The filter redacts the shared record, so a handler with an ordinary formatter is safe too,
    even when another handler's formatter already cached unredacted exception text on the record."""
    plain_first, filtered = io.StringIO(), io.StringIO()
    first = logging.StreamHandler(plain_first)  # no filter: it leaks by design, and caches exc_text
    second = logging.StreamHandler(filtered)
    second.setFormatter(logging.Formatter("%(message)s"))
    second.addFilter(RedactingFilter())
    logger = logging.getLogger("test.accesslog.two-handlers")
    logger.propagate = False
    logger.addHandler(first)
    logger.addHandler(second)
    try:
        try:
            raise RuntimeError(CANARY_KEY)
        except RuntimeError:
            logger.exception("boom")
    finally:
        logger.removeHandler(first)
        logger.removeHandler(second)
    assert CANARY_KEY in plain_first.getvalue()
    assert CANARY_KEY not in filtered.getvalue()
    assert "RuntimeError: [REDACTED]" in filtered.getvalue()


def test_unformattable_message_does_not_raise(captured: Captured) -> None:
    """Filters run outside logging's own error handling: a bad format string must not escape."""
    logger, stream = captured
    logger.info("%d items for " + CANARY_KEY, "not a number")
    out = stream.getvalue()
    assert "could not be formatted" in out
    assert CANARY_KEY not in out


def test_install_redaction_idempotent() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    inner = logging.Formatter("inner|%(message)s")
    handler.setFormatter(inner)
    logger = logging.getLogger("test.accesslog.install")
    logger.propagate = False
    logger.addHandler(handler)
    try:
        install_redaction(logger)
        install_redaction(logger)
        assert sum(isinstance(f, RedactingFilter) for f in handler.filters) == 1
        assert isinstance(handler.formatter, RedactingFormatter)
        assert handler.formatter.inner is inner  # wrapped once, not twice
        logger.warning("key %s", CANARY_KEY)
    finally:
        logger.removeHandler(handler)
    assert stream.getvalue() == f"inner|key {REDACTED}\n"


def test_install_redaction_defaults_to_root_logger() -> None:
    root = logging.getLogger()
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    root.addHandler(handler)
    last_resort = logging.lastResort
    saved = (last_resort.filters[:], last_resort.formatter) if last_resort is not None else None
    try:
        install_redaction()
        install_redaction()
        assert sum(isinstance(f, RedactingFilter) for f in handler.filters) == 1
        logging.getLogger("test.accesslog.child").warning("Authorization: Bearer %s", CANARY_KEY)
    finally:
        root.removeHandler(handler)
        if last_resort is not None and saved is not None:
            last_resort.filters[:] = saved[0]
            last_resort.setFormatter(saved[1])
    assert CANARY_KEY not in stream.getvalue()
    assert stream.getvalue() == f"Authorization: {REDACTED}\n"


# -- the fast paths: one marker scan per access line, none again in the filter and formatter ------

MARKER_PIECES = [
    "authorization",
    "AUTHORIZATION",
    "api-key",
    "Api_Key",
    "key=",
    "KEY=",
    "token=",
    "Bearer",
    "rp_",
    "RP_",
    "sk-",
    "Sk_",
    "rk_",
    "whsec_",
    "AIza",
    "aiza",
]
# Long s, Kelvin sign, dotted capital I, dotless i: case-insensitive regex matches them as s, k, i.
ODD_TEXT = st.text(alphabet="akeyrsptobwhizAKEYRSPTOBWHIZ-_= ?&:\n\"'\u017f\u212a\u0130\u0131\u00e9\udcff", max_size=12)
MARKERISH = st.lists(st.one_of(st.sampled_from(MARKER_PIECES), ODD_TEXT), max_size=6).map("".join)


@given(text=st.one_of(MARKERISH, st.text(max_size=40)))
def test_marker_check_is_the_regex(text: str) -> None:
    """The substring check is exactly the case-insensitive regex, Unicode case folding included."""
    assert accesslog._may_hold_secret(text) == (accesslog._MARKERS.search(text) is not None)


@pytest.mark.parametrize(
    "text", ["\u017fk-x", "author\u0130zation: x", "author\u0131zation: x", "\u212aey=1", "x-api-\u212aey: v", "AIZA"]
)
def test_marker_check_folds_case_as_the_regex_does(text: str) -> None:
    """Non-ASCII letters the regex folds onto a marker's (long s, Kelvin sign, dotted and dotless i)."""
    assert accesslog._MARKERS.search(text) is not None
    assert accesslog._may_hold_secret(text)


def reference_line(rec: UsageRecord | None, path: str, method: str, client: str | None, protocol: str | None) -> str:
    """access_line as it was: every text field redacted on its own, lone surrogates escaped."""

    def text(value: str | None) -> str | None:
        if value is None:
            return None
        value = redact(value)
        return value if value.isascii() else value.encode("utf-8", "backslashreplace").decode("utf-8")

    line: dict[str, object] = {
        "ts": text(rec.created_at if rec is not None else "2025-01-02T03:04:06.000Z"),
        "request_id": text("req_1"),
        "method": text(method),
        "path": text(path.partition("?")[0].partition("#")[0]),
        "status": 200,
        "duration_ms": 42,
        "client": text(client),
        "client_protocol": text((rec.client_protocol if rec is not None else None) or protocol),
    }
    if rec is not None:
        line.update(
            {
                "account": text(rec.account),
                "key_id": text(rec.key_id),
                "model": text(rec.model),
                "provider": text(rec.provider),
                "upstream_protocol": text(rec.upstream_protocol),
                "stream": rec.stream,
                "outcome": text(str(rec.outcome)),
                "billed": rec.billed,
                "reason": text(rec.reason),
                "input_tokens": rec.input_tokens,
                "cached_input_tokens": rec.cached_input_tokens,
                "output_tokens": rec.output_tokens,
                "reasoning_tokens": rec.reasoning_tokens,
                "cost_microusd": rec.cost_microusd,
            }
        )
    return orjson.dumps(line).decode("utf-8")


FIELD = st.one_of(
    st.sampled_from(["gpt-4o", "acme", "", "key_0123456789ab", "openai", *SECRETS.values()]),
    MARKERISH,
    st.text(max_size=20),
)


@given(
    with_record=st.booleans(),
    account=st.one_of(st.none(), FIELD),
    model=st.one_of(st.none(), FIELD),
    reason=FIELD,
    path=st.one_of(FIELD, FIELD.map(lambda v: "/v1/" + v + "?key=" + CANARY_KEY)),
    method=FIELD,
    client=st.one_of(st.none(), FIELD),
    protocol=st.one_of(st.none(), FIELD),
)
def test_access_line_is_what_field_by_field_redaction_gives(
    with_record: bool,
    account: str | None,
    model: str | None,
    reason: str,
    path: str,
    method: str,
    client: str | None,
    protocol: str | None,
) -> None:
    """One scan of all the values, then the line as it is, gives exactly the field-by-field result."""
    rec: UsageRecord | None = None
    if with_record:
        rec = full_record()
        rec.account, rec.model, rec.reason, rec.client_protocol = account, model, reason, protocol
    got = str(
        access_line(
            rec,
            ts="2025-01-02T03:04:06.000Z",
            method=method,
            path=path,
            status=200,
            duration_ms=42,
            client=client,
            request_id="req_1",
            protocol=protocol,
        )
    )
    assert got == reference_line(rec, path, method, client, protocol)


def test_access_line_keys_hold_no_marker() -> None:
    """The one-scan shortcut scans values only: the constant keys must not hide a marker either."""
    keys = "\n".join(line_for(full_record()))
    assert accesslog._MARKERS.search(keys) is None


def a_line() -> str:
    return str(
        access_line(
            full_record(),
            ts="t",
            method="POST",
            path="/v1/x",
            status=200,
            duration_ms=1,
            client=None,
            request_id="req_1",
        )
    )


def gateway_output(logger_name: str, msg: object, *args: object) -> str:
    """What the gateway's handler (filter and formatter, as configure_logging sets them) writes."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(AccessJsonFormatter("%(levelname)s %(message)s"))
    handler.addFilter(RedactingFilter())
    logger = logging.getLogger(logger_name)
    level, propagate = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        logger.info(msg, *args)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagate
    return stream.getvalue()


def test_access_line_is_logged_as_its_json_alone() -> None:
    """INTERFACE.md "Logs": the access logger writes the line's JSON, nothing before the `{`, unchanged."""
    rec = full_record()
    line = access_line(
        rec, ts="t", method="POST", path="/v1/x", status=200, duration_ms=1, client=None, request_id="req_1"
    )
    assert gateway_output(ACCESS_LOGGER, line) == f"{line}\n"
    assert orjson.loads(gateway_output(ACCESS_LOGGER, line))["model"] == "gpt-4o"


@pytest.mark.parametrize(
    "path",
    ["/v1/models/api_key", "/v1/authorization", "/v1/x-goog-api-key:", "/v1/Bearer"],
)
def test_access_line_values_stay_where_they_are(path: str) -> None:
    """Each value is redacted on its own: a name ending one field never takes the next key for its value."""
    line = access_line(None, ts="t", method="GET", path=path, status=404, duration_ms=1, client="c", request_id="r")
    out = gateway_output(ACCESS_LOGGER, line)
    parsed = orjson.loads(out)
    assert parsed == {
        "ts": "t",
        "request_id": "r",
        "method": "GET",
        "path": path,
        "status": 404,
        "duration_ms": 1,
        "client": "c",
        "client_protocol": None,
    }


@pytest.mark.parametrize("name", sorted(SECRETS))
def test_no_secret_reaches_the_access_log(name: str) -> None:
    """A secret in any field of an access line, or in any other message on the access logger, is gone."""
    secret = SECRETS[name]
    rec = full_record()
    rec.reason, rec.model = f"upstream said {secret}", secret
    line = access_line(
        rec, ts="t", method="POST", path=f"/v1/x?{secret}", status=401, duration_ms=1, client=secret, request_id="r"
    )
    out = gateway_output(ACCESS_LOGGER, line)
    assert secret_part(name) not in out
    parsed = orjson.loads(out)
    assert REDACTED in parsed["reason"] and REDACTED in parsed["model"] and REDACTED in parsed["client"]
    for msg, args in (
        ("%s", (secret,)),
        ("%s", (str(line) + secret,)),
        ("%s %s", (line, secret)),
        (str(line) + secret, ()),
        ("%r", ({"v": secret},)),
        (f"request failed: {secret}", ()),
    ):
        for logger_name in (ACCESS_LOGGER, "test.accesslog.other"):
            assert secret_part(name) not in gateway_output(logger_name, msg, *args), (msg, logger_name)


@pytest.mark.parametrize(
    "text", ["model=gpt-4o status=200 key_id=key_0123456789ab", '{"a": 1, "path": "/v1/x"}', "tokens: 120 (sk-short)"]
)
def test_non_secret_text_passes_unchanged(text: str) -> None:
    assert gateway_output(ACCESS_LOGGER, "%s", text) == f"{text}\n"
    assert gateway_output("test.accesslog.plain", "%s", text) == f"INFO {text}\n"
    line = a_line()
    assert gateway_output("test.accesslog.plain", "%s", line) == f"INFO {line}\n"


def test_access_line_with_a_traceback_or_stack_is_redacted(captured: Captured) -> None:
    logger, stream = captured
    line = a_line()
    try:
        raise ValueError(f"bad key {CANARY_KEY}")
    except ValueError:
        logger.exception("%s", line)
    logger.info("%s", line, stack_info=True)
    assert CANARY_KEY not in stream.getvalue()
    assert "ValueError: bad key [REDACTED]" in stream.getvalue()


def test_access_line_with_a_traceback_through_a_wrapped_formatter_is_redacted() -> None:
    """Without the filter, a wrapped plain formatter caches the traceback unredacted: still scanned."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(RedactingFormatter(inner=logging.Formatter("%(message)s")))
    logger = logging.getLogger("test.accesslog.wrapped-traceback")
    logger.propagate = False
    logger.addHandler(handler)
    line = a_line()
    try:
        try:
            raise ValueError(f"bad key {CANARY_KEY}")
        except ValueError:
            logger.exception("%s", line)
        logger.error("%s", line, stack_info=True)
    finally:
        logger.removeHandler(handler)
    assert CANARY_KEY not in stream.getvalue()
    assert line in stream.getvalue()


@pytest.mark.parametrize(
    "formatter",
    [
        RedactingFormatter("%(message)s %(user)s"),  # a field from extra=
        RedactingFormatter(inner=logging.Formatter("%(message)s %(user)s")),
        RedactingFormatter(inner=type("Custom", (logging.Formatter,), {})("%(message)s")),  # any other class
        RedactingFormatter("{message} {user}", style="{"),
    ],
)
def test_access_line_through_any_other_format_is_redacted(formatter: RedactingFormatter) -> None:
    """Only a plain %-format of logging's own fields skips the scan: anything else might add text."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    logger = logging.getLogger(f"test.accesslog.formats.{id(stream)}")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    line = a_line()
    try:
        logger.info("%s", line, extra={"user": f"Bearer {CANARY_KEY}"})
    finally:
        logger.removeHandler(handler)
    assert CANARY_KEY not in stream.getvalue()
    assert line in stream.getvalue()


@pytest.mark.parametrize("datefmt", [None, "%H:%M:%S", "%Y"])
@pytest.mark.parametrize("converter", [time.localtime, time.gmtime])
def test_cached_timestamps_are_logging_s_own(datefmt: str | None, converter: Any) -> None:
    ours, theirs = RedactingFormatter(datefmt=datefmt), logging.Formatter(datefmt=datefmt)
    ours.converter = theirs.converter = converter
    for created in (1_700_000_000.0, 1_700_000_000.999, 1_700_000_001.5, 1_700_000_000.25, 86_399.9, 1e9 + 0.001):
        record = logging.makeLogRecord({"created": created, "msecs": (created - int(created)) * 1000})
        assert ours.formatTime(record, datefmt) == theirs.formatTime(record, datefmt)
