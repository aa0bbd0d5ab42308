"""The test infrastructure itself: each registry variant, the shim and the fault proxy behave."""

from __future__ import annotations

import hashlib
import urllib.error
import urllib.request

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
