"""Helpers of the tests that start several gloo ranks in one machine."""
from __future__ import annotations

import socket


def free_port() -> int:
    """A TCP port nobody listens on now, for the ranks' rendezvous (MASTER_PORT)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
