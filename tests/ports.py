"""Free TCP ports on 127.0.0.1 for the servers the tests start.

A port asked of the kernel (bind to port 0) comes from its ephemeral range, the range that
outgoing connections take their source ports from; with many clients running beside each
other, such a port can be taken between the test choosing it and its server binding it. Ports
here are drawn below that range (``LOW``..``HIGH``), at random, and checked bindable.
"""

from __future__ import annotations

import random
import socket

__all__ = ["HIGH", "LOW", "free_port"]

#: The range drawn from: below Linux's default ephemeral range (32768–60999).
LOW, HIGH = 20_000, 32_000
_DRAW = random.Random()  # not the tests' seeded global generator


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (see the module notes)."""
    for _ in range(100):
        port = _DRAW.randint(LOW, HIGH)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as s:  # the whole range busy: any port the kernel gives
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
