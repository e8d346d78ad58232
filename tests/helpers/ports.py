"""A free TCP port on the loopback for a test's process group rendezvous."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A port the system just handed out and released (another process could take it, rarely, before use)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
