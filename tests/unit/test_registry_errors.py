"""Mapping registry answers to replicator.errors, and parsing Retry-After."""

from __future__ import annotations

import json
import ssl
from datetime import UTC, datetime

import aiohttp
import pytest
from aiohttp.client_reqrep import ConnectionKey

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
from replicator.targets.registry.errors import (
    connection_error,
    error_from_response,
    parse_error_body,
    parse_retry_after,
)

HOST = "127.0.0.1:5000"


def _err(status: int, body: bytes = b"", what: str = 'manifest "v9"') -> RegistryError:
    return error_from_response(status, body, registry=HOST, repository="app", what=what)


def _oci(code: str, message: str = "msg") -> bytes:
    body = {"errors": [{"code": code, "message": message, "detail": {"x": 1}}]}
    return json.dumps(body).encode()


def test_manifest_unknown_reads_like_the_spec_example() -> None:
    err = _err(404, _oci("MANIFEST_UNKNOWN", "manifest unknown"))
    assert isinstance(err, NotFoundError)
    assert str(err) == '127.0.0.1:5000/app: manifest "v9" not found (MANIFEST_UNKNOWN)'
    assert err.code == "MANIFEST_UNKNOWN" and err.status == 404
    assert err.registry == HOST and err.repository == "app"


def test_unknown_codes_are_not_found_even_with_400() -> None:
    err = _err(400, _oci("MANIFEST_BLOB_UNKNOWN"))
    assert isinstance(err, NotFoundError)
    assert "MANIFEST_BLOB_UNKNOWN" in str(err)


def test_name_unknown_names_the_repository() -> None:
    err = _err(404, _oci("NAME_UNKNOWN"))
    assert str(err) == "127.0.0.1:5000/app: repository not found (NAME_UNKNOWN)"


@pytest.mark.parametrize(
    ("status", "body", "cls"),
    [
        (401, _oci("UNAUTHORIZED"), AuthenticationError),
        (403, b"<html>forbidden</html>", DeniedError),
        (400, _oci("DENIED"), DeniedError),
        (429, _oci("TOOMANYREQUESTS"), RateLimitedError),
        (500, b"", ServerError),
        (503, b"oops", ServerError),
        (400, _oci("MANIFEST_INVALID"), RegistryError),
        (405, _oci("UNSUPPORTED"), RegistryError),
        (302, b"", ProtocolError),
    ],
)
def test_status_and_code_choose_the_class(status: int, body: bytes, cls: type) -> None:
    err = _err(status, body)
    assert type(err) is cls
    assert err.status == status
    assert str(err).startswith("127.0.0.1:5000/app: ")


def test_attempts_are_mentioned_for_server_errors() -> None:
    err = error_from_response(
        503, b"", registry=HOST, repository=None, what="blob sha256:x", attempts=6
    )
    assert "after 6 attempts" in str(err)
    assert str(err).startswith("127.0.0.1:5000: ")


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not json",
        b"<html><body>502 Bad Gateway</body></html>",
        b'{"errors": "nope"}',
        b'{"errors": [1, 2, null]}',
        b"[[[[[[[[[[[[[[[[[[[[",
        b"[" * 100000,
        b'{"errors":[{"code": 5, "message": ["x"]}]}',
        b"\xff\xfe\x00garbage",
    ],
)
def test_error_bodies_are_parsed_defensively(body: bytes) -> None:
    entries = parse_error_body(body)
    assert all(e.code is None or isinstance(e.code, str) for e in entries)
    err = _err(404, body)
    assert isinstance(err, NotFoundError)
    assert "HTTP 404" in str(err)


def test_registry_message_is_clipped_and_single_line() -> None:
    long = "line\n" * 500
    err = _err(400, _oci("MANIFEST_INVALID", long))
    assert "\n" not in str(err)
    assert len(str(err)) <= 300


def test_retry_after_seconds_and_dates() -> None:
    now = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(" 120 ") == 120.0
    assert parse_retry_after("1.5") == 1.5
    assert parse_retry_after("Thu, 01 Jan 2026 12:00:30 GMT", now=now) == 30.0
    assert parse_retry_after("Thu, 01 Jan 2026 11:00:00 GMT", now=now) == 0.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("") is None
    assert parse_retry_after("soon") is None
    assert parse_retry_after("-5") == 0.0


def test_refused_connection_message() -> None:
    key = ConnectionKey("127.0.0.1", 1, False, True, None, None, None)
    exc = aiohttp.ClientConnectorError(key, ConnectionRefusedError(111, "Connect call failed"))
    err = connection_error("127.0.0.1:1", exc)
    assert type(err) is ConnectionFailedError
    assert str(err) == "cannot reach 127.0.0.1:1: Connect call failed"


def test_certificate_failure_is_a_tls_error_with_a_hint() -> None:
    key = ConnectionKey("example.test", 443, True, True, None, None, None)
    inner = ssl.SSLCertVerificationError(1, "certificate verify failed")
    inner.verify_message = "self-signed certificate"
    exc = aiohttp.ClientConnectorCertificateError(key, inner)
    err = connection_error("example.test", exc)
    assert isinstance(err, TLSError)
    assert str(err) == (
        "TLS certificate of example.test did not verify: self-signed certificate; "
        "use --ca-file or --insecure"
    )


def test_timeouts_and_disconnects() -> None:
    assert str(connection_error("h", TimeoutError())) == "cannot reach h: timed out"
    err = connection_error("h", aiohttp.ServerDisconnectedError())
    assert "server closed the connection" in str(err)


def test_unexpected_success_status_names_the_expected_one() -> None:
    err = error_from_response(
        200, b"", registry=HOST, repository="app", what='manifest "v1"', expected="201"
    )
    assert isinstance(err, ProtocolError)
    assert (
        str(err) == '127.0.0.1:5000/app: unexpected answer HTTP 200 to manifest "v1" (expected 201)'
    )
