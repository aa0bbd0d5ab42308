"""Turning registry answers and network failures into :mod:`replicator.errors`.

Everything here is pure (no I/O) so it can be unit-tested: the transport hands
in the status, the headers it cares about and at most a few KiB of the body,
and gets back exactly one exception of the right class with a message a user
can act on, e.g. ``127.0.0.1:5000/app: manifest "v9" not found (MANIFEST_UNKNOWN)``.

Guarantees:

* Error bodies are parsed defensively: the OCI shape
  ``{"errors": [{"code", "message", "detail"}]}`` is used when present, anything
  else (HTML, empty, truncated JSON) yields an error without a code.
* Messages never contain request headers, query strings (upload locations can
  carry state) or anything the caller did not pass in explicitly.
* :func:`failure_kind` sorts a request that got no answer into the few kinds
  the retry policy tells apart (refused, reset, timed out, TLS, DNS, not HTTP),
  so that the classification and the messages cannot disagree.
"""

from __future__ import annotations

import json
import ssl
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Literal

from replicator.errors import (
    AuthenticationError,
    ConnectionFailedError,
    DeniedError,
    NotFoundError,
    ProtocolError,
    RateLimitedError,
    RegistryError,
    ServerError,
    TLSError,
)
from replicator.targets.registry._aiohttp import aiohttp

_MAX_MESSAGE = 200
#: OpenSSL reasons that mean "the peer answered, but not with TLS".
_NOT_TLS_REASONS = frozenset(
    {"wrong version number", "packet length too long", "http request", "record layer failure"}
)


@dataclass(frozen=True, slots=True)
class ErrorDetail:
    """One entry of an OCI error body; any field may be missing."""

    code: str | None
    message: str | None


def parse_error_body(body: bytes) -> list[ErrorDetail]:
    """The entries of an OCI error body, or ``[]`` for anything that is not one.

    Never raises: a registry (or a proxy in front of it) may answer with HTML,
    plain text, truncated or hostile JSON.
    """
    try:
        data = json.loads(body.decode("utf-8", errors="replace"))
    except (ValueError, RecursionError):
        return []
    if not isinstance(data, dict):
        return []
    entries = data.get("errors")
    if not isinstance(entries, list):
        return []
    out: list[ErrorDetail] = []
    for entry in entries[:20]:
        if not isinstance(entry, dict):
            continue
        code = entry.get("code")
        message = entry.get("message")
        out.append(
            ErrorDetail(
                code=code.upper()[:64] if isinstance(code, str) and code else None,
                message=_clean(message) if isinstance(message, str) and message else None,
            )
        )
    return out


def _clean(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _MAX_MESSAGE else text[: _MAX_MESSAGE - 1] + "…"


def where(registry: str, repository: str | None) -> str:
    """``host/repository`` (or just the host) as it starts every message."""
    return f"{registry}/{repository}" if repository else registry


def error_from_response(
    status: int,
    body: bytes,
    *,
    registry: str,
    repository: str | None,
    what: str,
    attempts: int = 1,
    expected: str | None = None,
) -> RegistryError:
    """The exception for a non-success answer ``status`` with error ``body``.

    ``what`` names the object of the request (``manifest "v9"``, ``blob sha256:…``,
    ``upload``); ``attempts`` is how many times the request was sent, mentioned
    for rate limits and server errors that outlived the retries; ``expected``
    names the statuses that would have been a success (for unexpected answers).
    """
    details = parse_error_body(body)
    code = details[0].code if details else None
    reg_message = details[0].message if details else None
    place = where(registry, repository)
    tail = f": {reg_message}" if reg_message else ""
    tried = f" after {attempts} attempts" if attempts > 1 else ""
    cls, message = _classify(status, code, place, what, tail, tried)
    if cls is ProtocolError and expected:
        message += f" (expected {expected})"
    return cls(message, status=status, code=code, registry=registry, repository=repository)


def _classify(
    status: int, code: str | None, place: str, what: str, tail: str, tried: str
) -> tuple[type[RegistryError], str]:
    if status == 404 or (code is not None and code.endswith("_UNKNOWN")):
        if code == "NAME_UNKNOWN":
            return NotFoundError, f"{place}: repository not found (NAME_UNKNOWN)"
        return NotFoundError, f"{place}: {what} not found ({code or f'HTTP {status}'})"
    if status == 401 or code == "UNAUTHORIZED":
        return AuthenticationError, (
            f"{place}: authentication required or credentials rejected for {what} "
            f"({code or 'HTTP 401'}); check --username/--password or `replicator login`"
        )
    if status == 403 or code == "DENIED":
        return DeniedError, f"{place}: access to {what} denied ({code or 'HTTP 403'}){tail}"
    if status == 429 or code == "TOOMANYREQUESTS":
        return RateLimitedError, (
            f"{place}: rate limited on {what}{tried} ({code or 'HTTP 429'}){tail}"
        )
    if status >= 500:
        label = f"HTTP {status}" + (f" {code}" if code else "")
        return ServerError, f"{place}: server error on {what}{tried} ({label}){tail}"
    if status == 405 or code == "UNSUPPORTED":
        return RegistryError, (
            f"{place}: the registry does not support this operation on {what} "
            f"({code or 'HTTP 405'}){tail}"
        )
    if 400 <= status < 500:
        label = f"HTTP {status}" + (f" {code}" if code else "")
        return RegistryError, f"{place}: {what} rejected ({label}){tail}"
    return ProtocolError, f"{place}: unexpected answer HTTP {status} to {what}"


def protocol_error(
    registry: str, repository: str | None, message: str, *, status: int | None = None
) -> ProtocolError:
    """A :class:`ProtocolError` for an answer that breaks the distribution protocol."""
    return ProtocolError(
        f"{where(registry, repository)}: {message}",
        status=status,
        registry=registry,
        repository=repository,
    )


def is_tls_failure(exc: BaseException) -> bool:
    """True when ``exc`` (an aiohttp/ssl exception) is a certificate or handshake failure."""
    if isinstance(exc, aiohttp.ClientConnectorCertificateError | aiohttp.ClientSSLError):
        return True
    cause: BaseException | None = exc
    for _ in range(5):
        if cause is None:
            break
        if isinstance(cause, ssl.SSLError | ssl.CertificateError):
            return True
        cause = cause.__cause__ or cause.__context__
    return False


class DeadlineExceeded(TimeoutError):
    """An attempt still waiting for its answer when the request's retry deadline passed."""


#: How a request that got no answer failed (see :func:`failure_kind`).
FailureKind = Literal["tls", "not_http", "dns", "refused", "timeout", "reset"]


def failure_kind(exc: BaseException) -> FailureKind:
    """Sort an exception of a request that got no HTTP answer.

    ``tls``: certificate or handshake failure; ``not_http``: the peer answered
    something that is not HTTP; ``dns``: the name did not resolve; ``refused``:
    no connection could be made (refused, unreachable); ``timeout``: connecting
    or waiting for the answer took too long; ``reset``: the connection broke
    (closed, reset, body cut off) — and anything else.
    """
    if is_tls_failure(exc):
        return "tls"
    if isinstance(exc, aiohttp.ClientResponseError):
        return "not_http"
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return "dns"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return "refused"
    if isinstance(exc, TimeoutError):
        return "timeout"
    return "reset"


def connection_error(
    host: str, exc: BaseException, *, attempts: int = 1, elapsed: float | None = None
) -> ConnectionFailedError:
    """The exception for a request that never got an answer (DNS, refused, TLS, time-out...).

    Only the OS-level reason goes into the message, never aiohttp's own text,
    which can contain the full request URL (query strings included).  When the
    request was sent ``attempts`` > 1 times over ``elapsed`` seconds, the
    message says so.
    """
    err = _connection_error(host, exc)
    if attempts > 1 and not isinstance(err, TLSError):
        spent = f" over {elapsed:.1f} s" if elapsed is not None else ""
        err = ConnectionFailedError(f"{err} (gave up after {attempts} attempts{spent})")
    return err


def _connection_error(host: str, exc: BaseException) -> ConnectionFailedError:
    if is_tls_failure(exc):
        reason = _tls_reason(exc)
        if reason in _NOT_TLS_REASONS:
            return TLSError(
                f"TLS handshake with {host} failed: the server does not speak TLS "
                f"({reason}); use --plain-http if it serves plain HTTP"
            )
        return TLSError(
            f"TLS certificate of {host} did not verify: {reason}; use --ca-file or --insecure"
        )
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return ConnectionFailedError(f"cannot reach {host}: timed out connecting")
    if isinstance(exc, aiohttp.SocketTimeoutError | DeadlineExceeded):
        return ConnectionFailedError(f"cannot reach {host}: timed out waiting for an answer")
    if isinstance(exc, TimeoutError):
        return ConnectionFailedError(f"cannot reach {host}: timed out")
    if isinstance(exc, aiohttp.ClientConnectorError):
        os_error = exc.os_error
        reason = os_error.strerror or type(os_error).__name__
        return ConnectionFailedError(f"cannot reach {host}: {_clean(reason)}")
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return ConnectionFailedError(f"cannot reach {host}: server closed the connection")
    if isinstance(exc, aiohttp.ClientPayloadError):
        return ConnectionFailedError(f"cannot reach {host}: response body broken off")
    if isinstance(exc, OSError) and exc.strerror:
        return ConnectionFailedError(f"cannot reach {host}: {_clean(exc.strerror)}")
    return ConnectionFailedError(f"cannot reach {host}: {type(exc).__name__}")


def _tls_reason(exc: BaseException) -> str:
    cause: BaseException | None = exc
    for _ in range(5):
        if cause is None:
            break
        if isinstance(cause, aiohttp.ClientConnectorCertificateError):
            cause = cause.certificate_error
            continue
        message = getattr(cause, "verify_message", None)
        if isinstance(message, str) and message:
            return _clean(message)
        reason = getattr(cause, "reason", None)
        if isinstance(cause, ssl.SSLError) and isinstance(reason, str) and reason:
            return _clean(reason.lower().replace("_", " "))
        cause = cause.__cause__ or cause.__context__
    return "handshake failed"


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds to wait according to a ``Retry-After`` header (delta-seconds or HTTP date).

    ``None`` when the header is absent or unreadable; never negative.
    """
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    if value.isdigit():
        return float(int(value))
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return max(0.0, seconds) if seconds == seconds else None  # NaN check
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    current = now or datetime.now(UTC)
    return max(0.0, (when - current).total_seconds())
