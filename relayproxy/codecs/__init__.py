"""Per-protocol codecs: pure functions over dicts and SSE events. One module per wire API."""

__all__ = ["PROTOCOLS"]

PROTOCOLS = ("openai", "anthropic", "gemini")
