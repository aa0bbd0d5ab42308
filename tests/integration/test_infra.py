"""The test infrastructure itself: each registry variant, the shim and the fault proxy behave."""

from __future__ import annotations

import base64
import hashlib
import ssl
import urllib.error
import urllib.request

import pytest

from tests.infra.registry import RegistryInstance


def _upload_blob(
    inst: RegistryInstance, repo: str, data: bytes, headers: dict[str, str] | None = None
) -> int:
    """Monolithic upload by hand (POST + PUT); returns the PUT status."""
    hdrs = dict(headers or {})
    ctx = inst.ssl_context()
    req = urllib.request.Request(
        f"{inst.url}/v2/{repo}/blobs/uploads/", method="POST", headers=hdrs
    )
    with urllib.request.urlopen(req, timeout=30, context=ctx) as resp:
        assert resp.status == 202
        location = resp.headers["Location"]
    if location.startswith("/"):
        location = inst.url + location
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    sep = "&" if "?" in location else "?"
    put = urllib.request.Request(
        f"{location}{sep}digest={digest}",
        data=data,
        method="PUT",
        headers={**hdrs, "Content-Type": "application/octet-stream"},
    )
    with urllib.request.urlopen(put, timeout=30, context=ctx) as resp:
        status: int = resp.status
    return status


def test_open_registry_accepts_a_blob_upload(
    registry_open: RegistryInstance, unique_repo: str
) -> None:
    data = b"hello open registry"
    assert _upload_blob(registry_open, unique_repo, data) == 201
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    with urllib.request.urlopen(f"{registry_open.url}/v2/{unique_repo}/blobs/{digest}") as resp:
        assert resp.read() == data


def _status(req: urllib.request.Request, ctx: ssl.SSLContext | None = None) -> int:
    try:
        with urllib.request.urlopen(req, timeout=30, context=ctx) as resp:
            status: int = resp.status
            return status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_basic_registry_rejects_a_wrong_password_and_accepts_the_right_one(
    registry_basic: RegistryInstance, unique_repo: str
) -> None:
    url = f"{registry_basic.url}/v2/"
    assert _status(urllib.request.Request(url)) == 401
    bad = base64.b64encode(f"{registry_basic.username}:wrong-password".encode()).decode()
    assert _status(urllib.request.Request(url, headers={"Authorization": f"Basic {bad}"})) == 401
    good = registry_basic.basic_auth_header()
    assert _status(urllib.request.Request(url, headers=good)) == 200
    assert _upload_blob(registry_basic, unique_repo, b"basic blob", good) == 201
    other = registry_basic.basic_auth_header("bob")
    assert _status(urllib.request.Request(url, headers=other)) == 200


def test_basic_options_carry_the_credentials(registry_basic: RegistryInstance) -> None:
    opts = registry_basic.options()
    assert opts.plain_http is True
    assert opts.credentials is not None
    assert opts.credentials.username == registry_basic.username
    assert opts.credentials.password == registry_basic.password
    assert registry_basic.password not in repr(registry_basic)


def test_tls_registry_refuses_an_unverified_client_and_works_with_the_ca(
    registry_tls: RegistryInstance, unique_repo: str
) -> None:
    url = f"{registry_tls.url}/v2/"
    with pytest.raises(urllib.error.URLError) as info:
        urllib.request.urlopen(url, timeout=30, context=ssl.create_default_context())
    assert isinstance(info.value.reason, ssl.SSLCertVerificationError)
    assert _status(urllib.request.Request(url), registry_tls.ssl_context()) == 200
    assert _upload_blob(registry_tls, unique_repo, b"tls blob") == 201
    opts = registry_tls.options()
    assert opts.plain_http is False
    assert opts.ca_file == registry_tls.ca_file
    # localhost is in the certificate too.
    port = registry_tls.host.rsplit(":", 1)[1]
    assert (
        _status(urllib.request.Request(f"https://localhost:{port}/v2/"), registry_tls.ssl_context())
        == 200
    )
