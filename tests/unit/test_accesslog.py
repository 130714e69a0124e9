"""Access lines carry only whitelisted fields; log redaction covers messages, args and tracebacks."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field

import orjson
import pytest

from relayproxy.accesslog import (
    REDACTED,
    RedactingFilter,
    RedactingFormatter,
    access_line,
    install_redaction,
    redact,
)
from relayproxy.records import Outcome, UsageRecord

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
    text = access_line(
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
    text = access_line(
        rec,
        ts="t",
        method="POST",
        path=f"/v1beta/models/m:generateContent?key={CANARY_KEY}&prompt={CANARY_PROMPT}",
        status=401,
        duration_ms=1,
        client=None,
        request_id="req_2",
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
