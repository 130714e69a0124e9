"""The codec registry: protocol name -> codec module. Dispatch by table, never by if-chain."""

from __future__ import annotations

from relayproxy.codecs import Codec, anthropic_messages, gemini_generate, openai_chat, openai_responses

__all__ = ["CODECS"]

CODECS: dict[str, Codec] = {
    "openai": openai_chat,
    "anthropic": anthropic_messages,
    "gemini": gemini_generate,
    "openai_responses": openai_responses,  # a client protocol only: no provider speaks it
}
