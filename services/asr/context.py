"""Decoding context: the hotwords and prompt a client gives to bias Whisper towards its words.

Every ASR entry point takes them in its own shape (the native socket's ``hotwords`` / ``prompt`` query
parameters, the upload forms' fields, Deepgram's ``keywords`` / ``keyterm``, OpenAI's ``prompt``, Wyoming's
``transcript_names`` / ``transcript_terms``) and turns them into one :class:`DecodingContext` here, checked
against ``model.max_context_chars`` (both together; past it: ``too_large``). The engine gives the context to
every decode of the session or upload, partials and finals alike, as Whisper's previous-text prompt:
``<|startofprev|>`` + hotwords + prompt, before the start of the transcript. It is never a decoder prefix, so
it biases the words without being written into the text.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from ..common.errors import ErrorCode, ServiceError

__all__ = ["DecodingContext", "checked_context", "context_of_terms", "join_terms"]


@dataclass(frozen=True)
class DecodingContext:
    hotwords: str = ""
    """Words and names likely to be said (comma-separated), given before the prompt."""
    prompt: str = ""
    """Text that precedes the audio (a previous sentence, a glossary, a style to follow)."""

    def __bool__(self) -> bool:
        return bool(self.hotwords or self.prompt)

    @property
    def chars(self) -> int:
        return len(self.hotwords) + len(self.prompt)

    def log_fields(self) -> dict[str, int]:
        """Fields of the "session started" log line: the sizes, never the words (they may be private)."""
        if not self:
            return {}
        return {"hotwords_chars": len(self.hotwords), "prompt_chars": len(self.prompt)}


def join_terms(*groups: Iterable[str]) -> str:
    """Terms from any number of lists (Deepgram's repeated ``keyterm``, Wyoming's names and terms) as one
    hotwords string: stripped, empty ones and repeats dropped, in order, comma-separated."""
    seen: dict[str, None] = {}
    for group in groups:
        for term in group:
            term = " ".join(str(term).split())
            if term and term.lower() not in (k.lower() for k in seen):
                seen[term] = None
    return ", ".join(seen)


def checked_context(hotwords: str | None, prompt: str | None, max_chars: int) -> DecodingContext:
    """The context of a session or upload; ``too_large`` when hotwords and prompt together pass ``max_chars``.
    Hotwords are written one way whatever the client's spacing (``a,b`` and ``a , b`` are ``a, b``): Whisper
    reads ``a,b`` as other tokens, and heeds it less."""
    context = DecodingContext(join_terms((hotwords or "").split(",")), (prompt or "").strip())
    if context.chars > max_chars:
        raise ServiceError(ErrorCode.TOO_LARGE, f"hotwords and prompt are {context.chars} characters together; "
                                                f"the limit is {max_chars} (model.max_context_chars)")
    return context


def context_of_terms(*groups: Iterable[str], max_chars: int, prompt: str | None = None) -> DecodingContext:
    """Lists of terms as a checked context: Deepgram's ``keyterm`` and ``keywords``, Wyoming's
    ``transcript_names`` and ``transcript_terms``. A session takes it as ``StreamParams(hotwords=..., prompt=...)``
    or ``AudioProcessor.context``, an upload as ``FileOptions(hotwords=..., prompt=...)``."""
    return checked_context(join_terms(*groups), prompt, max_chars)
