"""The codec registry: protocol name -> codec module. Dispatch by table, never by if-chain."""

from __future__ import annotations

from relayproxy.codecs import Codec, anthropic_messages, gemini_generate, openai_chat

__all__ = ["CODECS"]

CODECS: dict[str, Codec] = {
    "openai": openai_chat,
    "anthropic": anthropic_messages,
    "gemini": gemini_generate,
}
