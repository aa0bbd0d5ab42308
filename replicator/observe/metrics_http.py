"""The watch's HTTP endpoint: ``/metrics``, ``/healthz`` and ``/readyz``, served from a thread.

* ``/metrics`` — the Prometheus text format of the registry given (the
  watch's :class:`~replicator.observe.metrics.ServiceMetrics` and the process
  collector);
* ``/healthz`` — 200 while the process is alive and its event loop answers
  (the watch beats at least every few seconds; no beat for
  :data:`STALE_AFTER` seconds means a stuck loop: 503);
* ``/readyz`` — 200 once the config is loaded and the first pass is done,
  503 with the reason before.

The server runs in a daemon thread (a stuck event loop must not stop
``/healthz`` from saying so); it only reads state that the loop writes under
locks or as whole values.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import make_wsgi_app
from prometheus_client.registry import CollectorRegistry

from replicator.errors import UsageError

#: ``/healthz`` fails when the watch's loop has not beaten for this many seconds.
STALE_AFTER = 60.0


@dataclass(slots=True)
class Health:
    """What ``/healthz`` and ``/readyz`` answer from: a heartbeat and a readiness reason."""

    beat: float = field(default_factory=time.monotonic)
    #: None once ready; otherwise why not (``first pass running``).
    not_ready: str | None = "config not loaded"

    def alive(self) -> None:
        """The event loop is running: note it."""
        self.beat = time.monotonic()


def parse_address(text: str) -> tuple[str, int]:
    """``HOST:PORT``, ``[V6]:PORT`` or ``:PORT`` (every interface) as ``(host, port)``.

    Raises :class:`~replicator.errors.UsageError` for anything else.
    """
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise UsageError(f"--metrics-addr {text!r}: write HOST:PORT, such as 0.0.0.0:9090 or :9090")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)


class _Quiet(WSGIRequestHandler):
    """No access log on stderr: scrapes every few seconds would drown the logs."""

    def log_message(self, format: str, *args: Any) -> None:
        return


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True


def _app(registry: CollectorRegistry, health: Health) -> Callable[..., Iterable[bytes]]:
    metrics = make_wsgi_app(registry)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "/")
        if path == "/metrics":
            return metrics(environ, start_response)  # type: ignore[no-any-return]
        if path == "/healthz":
            stale = time.monotonic() - health.beat > STALE_AFTER
            return _text(start_response, 503 if stale else 200, "stuck" if stale else "ok")
        if path == "/readyz":
            reason = health.not_ready
            return _text(start_response, 200 if reason is None else 503, reason or "ready")
        return _text(start_response, 404, "not found: /metrics, /healthz, /readyz")

    return app


def _text(start_response: Callable[..., Any], status: int, text: str) -> list[bytes]:
    reasons = {200: "OK", 404: "Not Found", 503: "Service Unavailable"}
    body = (text + "\n").encode()
    start_response(
        f"{status} {reasons[status]}",
        [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))],
    )
    return [body]


class MetricsServer:
    """The endpoint, serving from a daemon thread until :meth:`close`."""

    def __init__(self, address: str, registry: CollectorRegistry, health: Health) -> None:
        host, port = parse_address(address)
        server_class: type[_Server] = _Server
        if ":" in host:
            server_class = type("_Server6", (_Server,), {"address_family": socket.AF_INET6})
        try:
            self._server = make_server(
                host, port, _app(registry, health), server_class, handler_class=_Quiet
            )
        except OSError as exc:
            raise UsageError(
                f"--metrics-addr {address}: cannot listen there ({exc.strerror or exc})"
            ) from None
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="metrics-server", daemon=True
        )
        self._thread.start()

    @property
    def address(self) -> str:
        """``host:port`` the server listens on (the port chosen when 0 was given)."""
        host, port = self._server.server_address[:2]
        text = host.decode() if isinstance(host, bytes) else str(host)
        return f"[{text}]:{port}" if ":" in text else f"{text}:{port}"

    def close(self) -> None:
        """Stop serving and close the socket."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
