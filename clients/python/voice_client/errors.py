"""The errors the client raises: one for what the server reported, one for a stream that could not go on.

:class:`ServiceError` carries the server's stable ``code`` (``bad_audio``,
``invalid_parameter``, ``too_large``, ``unauthorized``, ``not_supported``,
``overloaded``, ``timeout``, ``internal``, ...) and its message, from a
WebSocket ``error`` event or an HTTP error body. :class:`ConnectionLost` is a
stream whose socket dropped and that could not be resumed: every attempt
failed, resuming was turned off, or the audio it would have to replay was more
than :attr:`~.backoff.ResumePolicy.max_replay_s`.
"""

from __future__ import annotations

FATAL_CODES = frozenset({"bad_audio", "bad_request", "invalid_parameter", "unsupported_media", "too_large",
                         "unauthorized", "not_found", "not_supported", "timeout", "internal"})
"""Codes that end a session; ``overloaded`` ends one too but is worth another try (another instance)."""


class VoiceClientError(Exception):
    """Base class of everything this package raises."""


class ServiceError(VoiceClientError):
    """An error the server reported, with its machine ``code`` and human ``message``."""

    def __init__(self, code: str, message: str, status: int | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.status = status  # the HTTP status, for an HTTP error

    @property
    def retryable(self) -> bool:
        return self.code == "overloaded"


class ConnectionLost(VoiceClientError):
    """The socket dropped and the stream could not be resumed (``attempts`` tries; ``cause`` the last failure)."""

    def __init__(self, message: str, attempts: int = 0, cause: BaseException | None = None) -> None:
        super().__init__(message)
        self.attempts = attempts
        self.cause = cause
