"""FakeUpstream: a stdlib asyncio HTTP/1.1 server speaking the providers' real wire formats.

It answers OpenAI (``/v1/chat/completions``, ``/v1/responses``, ``/v1/responses/input_tokens``),
Anthropic (``/v1/messages``, ``count_tokens``) and
Gemini (``/v1beta/models/{m}:generateContent`` / ``:streamGenerateContent`` / ``:countTokens``).

Deliberately not built on relayproxy's own server. The behaviour is chosen by the ``model`` field
of the request body (the gateway sends the configured ``upstream_model``; for Gemini, the model in
the path), so e2e tests stay declarative: ``text``, ``tools``, ``nousage``, ``midstream-error``,
``truncated``, ``reset``, ``stall``, ``cut``, ``noanswer``, ``slow``, ``http429``, ``http500``,
``http400``, ``http529``, ``badjson``, ``nodone`` (OpenAI: EOF without ``[DONE]``), ``late`` (head
after a pause), ``pause`` (a pause mid-stream), ``tailN`` (N ms of silence after the event that
completes the answer, before the final framing: OpenAI's usage chunk then ``[DONE]``, Anthropic's
``message_delta`` then ``message_stop``, Gemini's finishReason chunk then the end of the body),
``hang`` (everything before that event, then silence until the gateway hangs up), ``tailhang``
(everything through that event, then the same silence: the final framing never comes),
``nousagehang`` (Anthropic: ``nousage`` as ``tailhang``). A suffix
``@N`` cuts the body into N-byte writes (splitting UTF-8 characters and CRLFs); ``@cl`` sends
Content-Length instead of chunked encoding.
"""

from tests.fakes.upstream._wire import FIXTURES, Captured, Reply, sse_events
from tests.fakes.upstream.anthropic import ANTHROPIC_SIGNATURE, ANTHROPIC_TEXT, anthropic_unary
from tests.fakes.upstream.gemini import gemini_unary
from tests.fakes.upstream.openai import openai_unary
from tests.fakes.upstream.server import FakeUpstream

__all__ = [
    "ANTHROPIC_SIGNATURE",
    "ANTHROPIC_TEXT",
    "FIXTURES",
    "Captured",
    "FakeUpstream",
    "Reply",
    "anthropic_unary",
    "gemini_unary",
    "openai_unary",
    "sse_events",
]
