"""The aiohttp session of one registry host: connection pool, TLS and time-outs.

:func:`new_session` builds the session every request of a host goes through.
Its guarantees:

* Connecting (TCP and TLS handshake) gives up after
  ``RegistryOptions.connect_timeout``; an answer that keeps the client waiting
  ``RegistryOptions.read_timeout`` for its next bytes (its first ones included,
  counted once the request is sent) breaks the connection.  There is no total
  time-out: a large blob may take as long as it keeps flowing.
* TLS: aiohttp's own verifying context unless the options ask for more
  (``--ca-file``: a context trusting that bundle; ``--insecure``: none), so that
  plain-HTTP hosts never pay for loading CA roots (see :mod:`._aiohttp`).
* Under a bandwidth limit (``RateLimits.bandwidth``) each connection's socket
  receive buffer is fixed at a twentieth of a second of that bandwidth (64 KiB to
  16 MiB; the kernel doubles it for its bookkeeping, so the window covers
  round trips up to about 100 ms at the limit) instead of growing with the
  kernel's autotuning: a download the rate layer paces then slows the sender
  down after that much, rather than after the several MiB an autotuned buffer
  takes in at full speed.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
from collections.abc import Callable
from typing import Any

from replicator.errors import ReplicatorError
from replicator.targets.registry._aiohttp import aiohttp
from replicator.targets.registry.options import RegistryOptions

USER_AGENT = "replicator/0.1"


def ssl_context(options: RegistryOptions) -> ssl.SSLContext | bool:
    """TLS settings of the connector: built only when the options ask for more than the default.

    ``True`` is aiohttp's own verifying context (``ssl.create_default_context()``,
    made once when aiohttp is imported, its system CA roots read on first use:
    see :mod:`._aiohttp`): building another one per target costs ~35 ms
    (``set_default_verify_paths``), for nothing on plain-HTTP hosts.
    """
    if options.insecure:
        return False
    if not options.ca_file:
        return True
    ctx = ssl.create_default_context()
    try:
        ctx.load_verify_locations(cafile=options.ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise ReplicatorError(
            f"cannot load CA file {options.ca_file}: "
            f"{getattr(exc, 'strerror', None) or type(exc).__name__}"
        ) from None
    return ctx


#: Seconds of a bandwidth limit a connection's receive buffer holds (see the module doc).
RECEIVE_BUFFER_SECONDS = 0.05
_MIN_RECEIVE_BUFFER = 64 * 1024
_MAX_RECEIVE_BUFFER = 16 * 1024 * 1024


def receive_buffer_size(bandwidth: int) -> int:
    """The socket receive buffer for connections under a limit of ``bandwidth`` bytes/s."""
    wanted = int(bandwidth * RECEIVE_BUFFER_SECONDS)
    return max(_MIN_RECEIVE_BUFFER, min(_MAX_RECEIVE_BUFFER, wanted))


def _sockets_with_receive_buffer(size: int) -> Callable[[Any], socket.socket]:
    """A connector socket factory setting ``SO_RCVBUF`` before the socket connects."""

    def factory(addr_info: Any) -> socket.socket:
        family, kind, proto, _, _ = addr_info
        sock = socket.socket(family=family, type=kind, proto=proto)
        # Refused: the kernel's default then (the limit still holds on average).
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
        return sock

    return factory


def new_session(options: RegistryOptions) -> aiohttp.ClientSession:
    """A session for one host under ``options`` (see the module doc)."""
    bandwidth = options.rate_limits.bandwidth
    factory = _sockets_with_receive_buffer(receive_buffer_size(bandwidth)) if bandwidth else None
    connector = aiohttp.TCPConnector(
        limit=0,
        limit_per_host=options.max_connections,
        ssl=ssl_context(options),
        socket_factory=factory,
    )
    timeout = aiohttp.ClientTimeout(
        total=None,
        sock_connect=options.connect_timeout,
        sock_read=options.read_timeout,
    )
    # No aiohttp TraceConfig: its per-request signals cost more CPU than the
    # one thing they told us (the authenticator's token requests, which it
    # counts itself).
    return aiohttp.ClientSession(
        connector=connector,
        timeout=timeout,
        headers={"User-Agent": USER_AGENT},
    )
