"""systemd's notify protocol over $NOTIFY_SOCKET (a unix datagram; no dependency).

What this project sends: READY=1 once a service can answer (after its preload), WATCHDOG=1 from the
engine's health monitor while the device makes progress (engine/ops/health.py), STOPPING=1 when a stop
begins, STATUS=... lines for `systemctl status`. `EXIT_CARD_LOST` is the exit status of a service whose
card could not be recovered: the units name it in RestartForceExitStatus= so systemd restarts it.
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger(__name__)

EXIT_CARD_LOST = 3  # deploy/installation_app.py and `ax-llm serve` exit with it when the card is lost


def sd_notify(*lines: str) -> bool:
    """Send `lines` (e.g. "READY=1", "STATUS=loading") to systemd; False when not run by systemd."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address or not lines:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]  # abstract namespace
    elif not address.startswith("/"):
        log.debug("NOTIFY_SOCKET %r is not a unix socket path; not notifying", address)
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            # bounded: a notify socket nobody reads must not stop the thread that reports (the main thread, the
            # health monitor); systemd reads at once, so a full queue means something is wrong on its side
            sock.settimeout(1.0)
            sock.connect(address)
            sock.sendall("\n".join(lines).encode())
    except OSError as exc:
        log.warning("sd_notify(%s) failed: %s", ", ".join(lines), exc)
        return False
    return True


def watchdog_interval() -> float | None:
    """systemd's WatchdogSec in seconds when it applies to this process (WATCHDOG_USEC/WATCHDOG_PID)."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid.isdigit() and int(pid) != os.getpid()):
        return None
    try:
        seconds = int(usec) / 1e6
    except ValueError:
        return None
    return seconds if seconds > 0 else None


def notify_ready(status: str | None = None) -> bool:
    """READY=1 (call after the preload: systemd's start timeout covers the load)."""
    return sd_notify("READY=1", *([f"STATUS={status}"] if status else []))


__all__ = ["EXIT_CARD_LOST", "notify_ready", "sd_notify", "watchdog_interval"]
