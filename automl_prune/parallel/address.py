"""Whether a Ray cluster answers at ``--address``, asked before the run directory exists.

``ray.init(address=HOST:PORT)`` keeps retrying a cluster that is not there for a minute or more; a TCP connect
to the head node's port answers in milliseconds (refused) or, for a host that drops packets, within the timeout.
"""

from __future__ import annotations

import os
import socket
from urllib.parse import urlsplit

from automl_prune.errors import ConfigError

__all__ = ["CONNECT_TIMEOUT_S", "check_cluster_address", "host_and_port"]

CONNECT_TIMEOUT_S = 10.0
"""How long a silent host is given before the run gives up (the issue asks for about 15 s at most)."""


def host_and_port(address: str) -> tuple[str, int] | None:
    """``(host, port)`` of ``HOST:PORT`` or ``ray://HOST:PORT``; None for ``auto`` (Ray finds the cluster itself)."""
    if address in ("auto", "local"):
        return None
    parts = urlsplit(address if "://" in address else f"ray://{address}")
    try:
        port = parts.port
    except ValueError:
        port = None
    if not parts.hostname or port is None:
        raise ConfigError(f"--address must be auto, HOST:PORT or ray://HOST:PORT, but got {address!r}")
    return parts.hostname, port


def check_cluster_address(address: str | None, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """`ConfigError` (one line) unless something listens at ``address``; ``auto`` needs ``RAY_ADDRESS`` or a
    cluster started on this machine, which Ray itself looks up quickly."""
    if address is None:
        return
    target = host_and_port(address)
    if target is None:
        return
    try:
        with socket.create_connection(target, timeout=timeout):
            pass
    except OSError as exc:
        reason = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or type(exc).__name__)
        hint = f" (RAY_ADDRESS is {os.environ['RAY_ADDRESS']!r})" if "RAY_ADDRESS" in os.environ else ""
        raise ConfigError(f"no Ray cluster answers at --address {address!r}: {reason}{hint}; start it with "
                          f"`ray start --head`, or leave --address out to run on this machine") from None
