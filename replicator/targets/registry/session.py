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
"""

from __future__ import annotations

import ssl

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


def new_session(options: RegistryOptions) -> aiohttp.ClientSession:
    """A session for one host under ``options`` (see the module doc)."""
    connector = aiohttp.TCPConnector(
        limit=0,
        limit_per_host=options.max_connections,
        ssl=ssl_context(options),
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
