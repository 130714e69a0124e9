"""The canonical chat model shared by the codecs. Only what the three protocols share lives here."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Usage"]


@dataclass(slots=True, frozen=True)
class Usage:
    """Token counts normalised to INTERFACE.md meanings.

    ``input_tokens`` counts every prompt token (cache reads and writes included);
    ``cached_input_tokens`` is the part of it read from cache; ``output_tokens`` counts every
    generated token (reasoning included); ``reasoning_tokens`` is the part of it spent reasoning.
    """

    input_tokens: int = 0
    cached_input_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0
