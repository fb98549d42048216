"""Liveness for supervisors: systemd's readiness and watchdog protocol, and an exit on a stall that does not end.

A hung model call cannot be killed (it holds its worker thread), and the
schedulers already refuse work and turn ``/ready`` to 503 while one lasts. What
this module adds is the way back: :class:`Watchdog` tells systemd ``READY=1``
once the models are loaded and then sends ``WATCHDOG=1`` every half
``WATCHDOG_USEC`` (set by systemd from the unit's ``WatchdogSec``) *only while
no model is stalled* and the event loop runs; a stalled model stops the feeding,
so systemd kills the unit and ``Restart=on-failure`` brings it back. Where no
systemd watches (a container, a plain supervisor), a stall that lasts
``server.stall_exit_s`` ends the process with :data:`STALL_EXIT_STATUS` so the
supervisor restarts it. The protocol is one datagram per message on the unix
socket ``$NOTIFY_SOCKET``; without that variable nothing is sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time

log = logging.getLogger(__name__)

STALL_EXIT_STATUS = 70  # EX_SOFTWARE


def notify(message: str) -> bool:
    """Send one sd_notify message; False where no systemd listens."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]  # abstract namespace
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.sendto(message.encode(), address)
        return True
    except OSError as exc:
        log.warning("sd_notify failed", extra={"error": str(exc)})
        return False


class Watchdog:
    """Feeds systemd's watchdog while the runtime's models answer; exits after ``stall_exit_s`` of a stall."""

    def __init__(self, admission, stall_exit_s: float, exit_process=os._exit) -> None:
        self.admission = admission
        self.stall_exit_s = stall_exit_s
        usec = os.environ.get("WATCHDOG_USEC", "")
        self.feed_interval_s = int(usec) / 2e6 if usec.isdigit() and int(usec) > 0 else None
        self._exit = exit_process
        self._stalled_since: float | None = None
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        notify("READY=1")
        self._task = asyncio.create_task(self._run(), name="watchdog")

    async def stop(self) -> None:
        notify("STOPPING=1")
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def check(self) -> None:
        """One round: feed while healthy; exit once stalled for ``stall_exit_s``."""
        if not self.admission.stalled:
            self._stalled_since = None
            if self.feed_interval_s is not None:
                notify("WATCHDOG=1")
            return
        now = time.monotonic()
        if self._stalled_since is None:
            self._stalled_since = now
            log.error("a model is stalled: the watchdog is no longer fed",
                      extra={"stalled": sorted(self.admission.stalled)})
        if self.stall_exit_s > 0 and now - self._stalled_since >= self.stall_exit_s:
            log.critical("a model has been stalled for %.0f s; exiting so the supervisor restarts the service",
                         now - self._stalled_since, extra={"status": STALL_EXIT_STATUS})
            for handler in logging.getLogger().handlers:
                handler.flush()
            self._exit(STALL_EXIT_STATUS)

    async def _run(self) -> None:
        interval_s = min(self.feed_interval_s or 1.0, 1.0)
        while True:
            self.check()
            await asyncio.sleep(interval_s)
