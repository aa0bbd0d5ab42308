"""aiohttp, imported without reading the system CA bundle at import time.

aiohttp builds two TLS client contexts when it is imported (its verifying default
and its ``ssl=False`` one) and each loads the system CA bundle: about 66 ms of
every command's start on the reference machine, a fifth of a short command's run, spent
even when no TLS connection is ever made (plain-HTTP registries on loopback, OCI
layouts, the 2-core CI box).

The registry modules import aiohttp through here.  On the first import, loading
the default verify paths is deferred for the contexts built during that import
only; each such context becomes a :class:`RootsOnFirstUse`, which loads exactly
what was skipped (``set_default_verify_paths``) before it wraps its first
connection.  Verification is unchanged: a context never verifies a peer before
its roots are in.  When aiohttp was imported before (by a test, another library),
nothing is changed.
"""

from __future__ import annotations

import ssl
import sys
import threading
from typing import Any

__all__ = ["RootsOnFirstUse", "aiohttp"]


class RootsOnFirstUse(ssl.SSLContext):
    """An :class:`ssl.SSLContext` whose default verify paths load on first use.

    Every way a context starts TLS (``wrap_bio`` for asyncio and uvloop,
    ``wrap_socket`` for blocking sockets) and every way it reports its roots
    loads them first, once.
    """

    _load_lock = threading.Lock()

    def _ensure_roots(self) -> None:
        if not self.__dict__.get("_roots_pending"):
            return
        with self._load_lock:
            if self.__dict__.pop("_roots_pending", False):
                ssl.SSLContext.set_default_verify_paths(self)

    def wrap_bio(self, *args: Any, **kwargs: Any) -> ssl.SSLObject:
        self._ensure_roots()
        return super().wrap_bio(*args, **kwargs)

    def wrap_socket(self, *args: Any, **kwargs: Any) -> ssl.SSLSocket:
        self._ensure_roots()
        return super().wrap_socket(*args, **kwargs)

    def cert_store_stats(self) -> dict[str, int]:
        self._ensure_roots()
        return super().cert_store_stats()

    def get_ca_certs(self, binary_form: bool = False) -> Any:
        self._ensure_roots()
        return super().get_ca_certs(binary_form)


def _import() -> None:
    if "aiohttp" in sys.modules:
        return
    deferred: list[ssl.SSLContext] = []
    original = ssl.SSLContext.set_default_verify_paths

    def defer(self: ssl.SSLContext) -> None:
        deferred.append(self)

    ssl.SSLContext.set_default_verify_paths = defer  # type: ignore[method-assign]
    try:
        import aiohttp  # noqa: F401
    finally:
        ssl.SSLContext.set_default_verify_paths = original  # type: ignore[method-assign]
    for ctx in deferred:
        if type(ctx) is ssl.SSLContext:
            # Same memory layout (a subclass adding only methods): the context keeps
            # every setting aiohttp gave it and gains the load-on-first-use methods.
            ctx.__class__ = RootsOnFirstUse
            ctx.__dict__["_roots_pending"] = True
        else:  # a subclass we do not know: load now, as it would have
            original(ctx)


_import()

import aiohttp  # noqa: E402  (after _import, by design)
