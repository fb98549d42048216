"""How a stream resumes: the policy (attempts, jittered exponential backoff, the replay bound).

:class:`ResumePolicy` is a documented dataclass both streams take. The delay
before attempt *n* is drawn uniformly from 0 to ``min(max_delay_s,
base_delay_s * 2**(n-1))`` ("full jitter"), so many clients cut at once by one
dead instance do not come back in step.
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class ResumePolicy:
    enabled: bool = True
    """Resume after a dropped socket; False: a drop raises :class:`~.errors.ConnectionLost` at once."""
    max_attempts: int = 8
    """Connection attempts after one drop before giving up with :class:`~.errors.ConnectionLost`."""
    base_delay_s: float = 0.2
    """The first attempt's delay bound; each next attempt doubles it."""
    max_delay_s: float = 5.0
    """The most any one delay may be."""
    max_replay_s: float = 60.0
    """ASR: the most audio kept for a replay, in seconds of stream audio. A client keeps what it sent after the
    end of the last final it received, normally one utterance and a pause; at 16 kHz PCM16 a minute costs
    1.92 MB (8 kHz mu-law: 0.48 MB). Audio older than this is let go while no utterance is open (it is
    silence the server has already heard); if an open utterance needs more, a drop raises ``ConnectionLost``.
    Keep it at or below the server's ``server.max_replay_s`` (300 s by default): a resume announcing more is
    refused with ``too_large``."""
    open_timeout_s: float = 10.0
    """Time one connection attempt (TCP, TLS, WebSocket handshake, ``ready``) may take."""
    keepalive_s: float | None = 10.0
    """Ping the server this often and count the socket as dropped when a pong takes longer: a path that dies
    without a reset (a partition, a suspended laptop) is noticed within twice this. None: no pings."""

    def delay_s(self, attempt: int, rng: random.Random | None = None) -> float:
        """The delay before attempt ``attempt`` (1-based)."""
        bound = min(self.max_delay_s, self.base_delay_s * 2 ** max(0, attempt - 1))
        return (rng or random).uniform(0.0, bound)


NO_RESUME = ResumePolicy(enabled=False)
