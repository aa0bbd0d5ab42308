"""The fault proxy's newer faults do what they say (raw HTTP, real registries).

Short bodies with an honest-looking length, lengths that lie, headers that lie,
flipped request bytes, slow links, redirects to another host, hooks (a registry
restart at the n-th request), a registry that is down, and the record of
tokens handed out.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import threading
import time
import urllib.parse
from collections.abc import Callable
from typing import Any

import anyio
import pytest

from replicator.oci.descriptor import Descriptor
from replicator.targets.registry import RegistryTarget
from tests.infra.proxy import STORAGE_HOST, FaultProxy
from tests.infra.registry import RegistryInstance, RunningRegistry


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _http(
    host: str,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    name, port = host.rsplit(":", 1)
    conn = http.client.HTTPConnection(name, int(port), timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        data = resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data
    finally:
        conn.close()


def _upload(inst: Any, repo: str, data: bytes, auth: dict[str, str] | None = None) -> int:
    status, headers, _ = _http(inst.host, "POST", f"/v2/{repo}/blobs/uploads/", b"", auth)
    assert status == 202, status
    loc = urllib.parse.urlsplit(headers["location"])
    path = f"{loc.path}?{loc.query}&digest={_digest(data)}"
    status, _, _ = _http(
        inst.host, "PUT", path, data, {**(auth or {}), "Content-Type": "application/octet-stream"}
    )
    return status


def _blob(repo: str, data: bytes) -> str:
    return f"/v2/{repo}/blobs/{_digest(data)}"


def test_truncate_sends_a_short_body_with_a_matching_length(
    registry_open: RegistryInstance, fault_proxy: Callable[..., FaultProxy], unique_repo: str
) -> None:
    proxy = fault_proxy(registry_open)
    data = os.urandom(300_000)
    assert _upload(registry_open, unique_repo, data) == 201
    proxy.truncate("GET", r"/blobs/sha256:", 1234)
    status, headers, body = _http(proxy.host, "GET", _blob(unique_repo, data))
    assert status == 200 and body == data[:1234] and headers["content-length"] == "1234"
    status, _, body = _http(proxy.host, "GET", _blob(unique_repo, data))
    assert status == 200 and body == data


def test_wrong_length_over_claims_then_hangs_up_or_under_claims(
    registry_open: RegistryInstance, fault_proxy: Callable[..., FaultProxy], unique_repo: str
) -> None:
    proxy = fault_proxy(registry_open)
    data = os.urandom(100_000)
    assert _upload(registry_open, unique_repo, data) == 201
    proxy.wrong_length("GET", r"/blobs/sha256:", 10)
    with pytest.raises(http.client.IncompleteRead) as info:
        _http(proxy.host, "GET", _blob(unique_repo, data))
    assert info.value.partial == data
    proxy.wrong_length("GET", r"/blobs/sha256:", -99_000)
    status, headers, body = _http(proxy.host, "GET", _blob(unique_repo, data))
    assert status == 200 and body == data[:1000] and headers["content-length"] == "1000"
    proxy.wrong_length("HEAD", r"/blobs/sha256:", 7)
    status, headers, _ = _http(proxy.host, "HEAD", _blob(unique_repo, data))
    assert status == 200 and headers["content-length"] == str(len(data) + 7)


def test_wrong_digest_header_and_flipped_request_bytes(
    registry_open: RegistryInstance, fault_proxy: Callable[..., FaultProxy], unique_repo: str
) -> None:
    proxy = fault_proxy(registry_open)
    data = os.urandom(50_000)
    assert _upload(registry_open, unique_repo, data) == 201
    proxy.wrong_digest("GET", r"/blobs/sha256:")
    status, headers, body = _http(proxy.host, "GET", _blob(unique_repo, data))
    assert status == 200 and body == data
    assert headers["docker-content-digest"].startswith("sha256:")
    assert headers["docker-content-digest"] != _digest(data)
    # The registry gets a flipped byte and refuses the upload: its digest does not match.
    other = os.urandom(60_000)
    proxy.flip_request("PUT", r"/blobs/uploads/", 30_000)
    assert _upload(proxy, unique_repo, other) == 400
    status, _, _ = _http(registry_open.host, "HEAD", _blob(unique_repo, other))
    assert status == 404
    assert _upload(proxy, unique_repo, other) == 201


def test_throttle_slows_a_download_to_the_rate(
    registry_open: RegistryInstance, fault_proxy: Callable[..., FaultProxy], unique_repo: str
) -> None:
    proxy = fault_proxy(registry_open)
    data = os.urandom(200_000)
    assert _upload(registry_open, unique_repo, data) == 201
    proxy.throttle("GET", r"/blobs/sha256:", 400_000, times=1)
    started = time.monotonic()
    status, _, body = _http(proxy.host, "GET", _blob(unique_repo, data))
    took = time.monotonic() - started
    assert status == 200 and body == data
    # 200,000 B at 400,000 B/s is 0.5 s; the pause after the last slice (at most a
    # tenth of a second of bytes) comes after the client has its body.
    assert took >= 0.5 - 0.1 - 0.02, took


def test_redirect_goes_to_another_host_and_the_client_sends_it_no_credentials(
    registry_basic: RegistryInstance, fault_proxy: Callable[..., FaultProxy], unique_repo: str
) -> None:
    proxy = fault_proxy(registry_basic)
    auth = registry_basic.basic_auth_header()
    data = os.urandom(70_000)
    assert _upload(registry_basic, unique_repo, data, auth) == 201
    proxy.redirect("GET", r"/blobs/sha256:")
    status, headers, _ = _http(proxy.host, "GET", _blob(unique_repo, data), headers=auth)
    assert status == 307
    where = urllib.parse.urlsplit(headers["location"])
    assert where.hostname == STORAGE_HOST and where.netloc != proxy.host
    # The storage side serves the object to whoever holds the URL (it is signed).
    status, _, body = _http(where.netloc, "GET", f"{where.path}?{where.query}")
    assert status == 200 and body == data

    # replicator's own client follows it, without the registry's credentials.
    proxy.redirect("GET", r"/blobs/sha256:")

    async def fetch() -> bytes:
        async with RegistryTarget(proxy.host, proxy.options()) as target:
            desc = Descriptor("application/octet-stream", _digest(data), len(data))
            return b"".join([c async for c in target.fetch_blob(unique_repo, desc)])

    assert anyio.run(fetch) == data
    seen = proxy.storage_requests()
    assert len(seen) == 2
    assert not any("authorization" in {k.lower() for k in r.headers} for r in seen)
    assert registry_basic.password is not None
    assert all(registry_basic.password not in str(r.headers) for r in seen)


def test_hook_runs_at_the_nth_request_and_a_down_registry_is_dropped_or_502(
    registry_factory: Callable[..., RunningRegistry], fault_proxy: Callable[..., FaultProxy]
) -> None:
    running = registry_factory("open")
    dropping = fault_proxy(running.instance, upstream_down="drop")
    gateway = fault_proxy(running.instance)
    fired = threading.Event()
    dropping.hook("GET", r"^/v2/$", fired.set, nth=2)
    assert _http(dropping.host, "GET", "/v2/")[0] == 200
    assert not fired.is_set()
    assert _http(dropping.host, "GET", "/v2/")[0] == 200
    assert fired.wait(5)
    running.stop()
    with pytest.raises((http.client.RemoteDisconnected, ConnectionError)):
        _http(dropping.host, "GET", "/v2/")
    assert _http(gateway.host, "GET", "/v2/")[0] == 502
    running.start()
    assert _http(dropping.host, "GET", "/v2/")[0] == 200


def test_tokens_handed_out_through_the_proxy_are_recorded(
    registry_token: RegistryInstance, fault_proxy: Callable[..., FaultProxy], unique_repo: str
) -> None:
    proxy = fault_proxy(registry_token)
    token = proxy.token([f"repository:{unique_repo}:pull"], user="reader")
    assert token in proxy.tokens_seen()
