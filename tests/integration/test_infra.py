"""The test infrastructure itself: each registry variant, the shim and the fault proxy behave."""

from __future__ import annotations

import base64
import concurrent.futures
import hashlib
import http.client
import json
import os
import re
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from multidict import CIMultiDict

from tests.conftest import _Registries
from tests.infra.forward import rewrite_location
from tests.infra.process import child_env
from tests.infra.proxy import FaultProxy, FaultRule, classify
from tests.infra.registry import RegistryInstance, RunningRegistry
from tests.infra.shim import referrer_descriptor, set_referrers_page_size
from tests.infra.token_server import Rule, grant, parse_scope


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
    assert registry_basic.password is not None
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


def test_token_registry_rejects_a_push_with_a_readers_token_and_accepts_an_admins(
    registry_token: RegistryInstance, unique_repo: str
) -> None:
    scope = f"repository:{unique_repo}:pull,push"
    url = f"{registry_token.url}/v2/"
    challenge_req = urllib.request.Request(url)
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(challenge_req, timeout=30)
    assert info.value.code == 401
    challenge = info.value.headers["WWW-Authenticate"]
    assert challenge.startswith("Bearer ")
    assert f'realm="{registry_token.token_url}/token"' in challenge

    reader = registry_token.token([scope], user="reader")
    claims = jwt.decode(reader, options={"verify_signature": False})
    assert claims["access"] == [{"type": "repository", "name": unique_repo, "actions": ["pull"]}]
    push = urllib.request.Request(
        f"{registry_token.url}/v2/{unique_repo}/blobs/uploads/",
        method="POST",
        headers={"Authorization": f"Bearer {reader}"},
    )
    assert _status(push) in (401, 403)

    admin = registry_token.token([scope], user="admin")
    data = b"token blob"
    assert (
        _upload_blob(registry_token, unique_repo, data, {"Authorization": f"Bearer {admin}"}) == 201
    )

    # A token with the same claims signed by another key is refused.
    forged_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    forged_claims = jwt.decode(admin, options={"verify_signature": False})
    forged_header = jwt.get_unverified_header(admin)
    forged = jwt.encode(
        forged_claims, forged_key, algorithm="RS256", headers={"x5c": forged_header["x5c"]}
    )
    forged_push = urllib.request.Request(
        f"{registry_token.url}/v2/{unique_repo}/blobs/uploads/",
        method="POST",
        headers={"Authorization": f"Bearer {forged}"},
    )
    assert _status(forged_push) == 401

    log = [e for e in registry_token.token_log() if scope in e["scopes"]]
    assert [(e["user"], e["granted"][0]["actions"]) for e in log] == [
        ("reader", ["pull"]),
        ("admin", ["pull", "push"]),
    ]


def test_token_server_rejects_a_wrong_password_and_issues_refresh_tokens(
    registry_token: RegistryInstance, unique_repo: str
) -> None:
    token_url = f"{registry_token.token_url}/token"
    bad = base64.b64encode(b"admin:not-the-password").decode()
    req = urllib.request.Request(
        f"{token_url}?service=x&scope=repository:{unique_repo}:pull",
        headers={"Authorization": f"Basic {bad}"},
    )
    assert _status(req) == 401

    scope = f"repository:lim/{unique_repo}:pull,push repository:{unique_repo}:pull,push"
    form = urllib.parse.urlencode(
        {
            "grant_type": "password",
            "username": "limited",
            "password": registry_token.users["limited"],
            "service": "replicator-test-registry",
            "scope": scope,
            "client_id": "replicator-tests",
        }
    ).encode()
    with urllib.request.urlopen(token_url, data=form, timeout=30) as resp:
        body = json.loads(resp.read())
    claims = jwt.decode(body["access_token"], options={"verify_signature": False})
    # limited may push only under lim/: the other repository is not granted at all.
    assert claims["access"] == [
        {"type": "repository", "name": f"lim/{unique_repo}", "actions": ["pull", "push"]}
    ]
    assert claims["sub"] == "limited"
    refresh = body["refresh_token"]
    form2 = urllib.parse.urlencode(
        {
            "grant_type": "refresh_token",
            "refresh_token": refresh,
            "service": "replicator-test-registry",
            "scope": f"repository:lim/{unique_repo}:pull",
        }
    ).encode()
    with urllib.request.urlopen(token_url, data=form2, timeout=30) as resp:
        again = json.loads(resp.read())
    assert jwt.decode(again["token"], options={"verify_signature": False})["sub"] == "limited"
    bad_refresh = urllib.parse.urlencode(
        {"grant_type": "refresh_token", "refresh_token": "nope", "service": "x"}
    ).encode()
    assert _status(urllib.request.Request(token_url, data=bad_refresh)) == 401
    # No secret is ever recorded.
    dumped = json.dumps(registry_token.token_log())
    assert registry_token.users["limited"] not in dumped
    assert refresh not in dumped


EMPTY_CONFIG = b"{}"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def _request(
    inst: RegistryInstance,
    method: str,
    path: str,
    data: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, CIMultiDict[str], bytes]:
    req = urllib.request.Request(
        inst.url + path, data=data, method=method, headers=dict(headers or {})
    )
    try:
        with urllib.request.urlopen(req, timeout=30, context=inst.ssl_context()) as resp:
            return resp.status, CIMultiDict(resp.headers.items()), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, CIMultiDict(exc.headers.items()), exc.read()


def _push_manifest(
    inst: RegistryInstance, repo: str, ref: str, doc: dict[str, Any]
) -> tuple[str, int, CIMultiDict[str]]:
    raw = json.dumps(doc).encode()
    status, headers, _ = _request(
        inst, "PUT", f"/v2/{repo}/manifests/{ref}", raw, {"Content-Type": OCI_MANIFEST}
    )
    return "sha256:" + hashlib.sha256(raw).hexdigest(), status, headers


def _image(
    subject: dict[str, Any] | None = None, artifact_type: str | None = None, note: str = ""
) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {
            "mediaType": "application/vnd.oci.empty.v1+json",
            "digest": "sha256:" + hashlib.sha256(EMPTY_CONFIG).hexdigest(),
            "size": len(EMPTY_CONFIG),
        },
        "layers": [],
        "annotations": {"note": note or "x"},
    }
    if artifact_type:
        doc["artifactType"] = artifact_type
    if subject:
        doc["subject"] = subject
    return doc


def test_referrers_shim_answers_referrers_and_oci_subject(
    registry_referrers: RegistryInstance, unique_repo: str
) -> None:
    inst = registry_referrers
    assert _upload_blob(inst, unique_repo, EMPTY_CONFIG) == 201
    # HEAD through the shim keeps Content-Length and the digest header.
    config_digest = "sha256:" + hashlib.sha256(EMPTY_CONFIG).hexdigest()
    status, headers, body = _request(inst, "HEAD", f"/v2/{unique_repo}/blobs/{config_digest}")
    assert (status, headers["Content-Length"], body) == (200, "2", b"")
    assert headers["Docker-Content-Digest"] == config_digest

    subject_digest, status, headers = _push_manifest(
        inst, unique_repo, "v1", _image(note="subject")
    )
    assert status == 201
    assert "OCI-Subject" not in headers
    subject = {"mediaType": OCI_MANIFEST, "digest": subject_digest, "size": 0}
    sig_digest, status, headers = _push_manifest(
        inst, unique_repo, "sig", _image(subject, "signature/example", "sig")
    )
    assert status == 201
    assert headers["OCI-Subject"] == subject_digest
    sbom_digest, status, _ = _push_manifest(
        inst, unique_repo, "sbom", _image(subject, "sbom/example", "sbom")
    )
    assert status == 201

    status, headers, body = _request(inst, "GET", f"/v2/{unique_repo}/referrers/{subject_digest}")
    assert status == 200
    assert headers["Content-Type"] == "application/vnd.oci.image.index.v1+json"
    index = json.loads(body)
    assert [(m["digest"], m["artifactType"]) for m in index["manifests"]] == [
        (sig_digest, "signature/example"),
        (sbom_digest, "sbom/example"),
    ]
    assert index["manifests"][0]["annotations"] == {"note": "sig"}
    assert index["manifests"][0]["mediaType"] == OCI_MANIFEST
    assert "OCI-Filters-Applied" not in headers

    status, headers, body = _request(
        inst, "GET", f"/v2/{unique_repo}/referrers/{subject_digest}?artifactType=sbom/example"
    )
    assert headers["OCI-Filters-Applied"] == "artifactType"
    assert [m["digest"] for m in json.loads(body)["manifests"]] == [sbom_digest]

    # Deleting a referrer makes it disappear; an unknown subject gets an empty index.
    status, _, _ = _request(inst, "DELETE", f"/v2/{unique_repo}/manifests/{sig_digest}")
    assert status == 202
    _, _, body = _request(inst, "GET", f"/v2/{unique_repo}/referrers/{subject_digest}")
    assert [m["digest"] for m in json.loads(body)["manifests"]] == [sbom_digest]
    unknown = "sha256:" + "0" * 64
    status, _, body = _request(inst, "GET", f"/v2/{unique_repo}/referrers/{unknown}")
    assert status == 200 and json.loads(body)["manifests"] == []
    # The plain registry behind the shim has no referrers API.
    assert inst.upstream is not None
    status, _, _ = _request(inst.upstream, "GET", f"/v2/{unique_repo}/referrers/{subject_digest}")
    assert status == 404


def test_shim_rewrites_upload_locations_to_itself(
    registry_referrers: RegistryInstance, unique_repo: str
) -> None:
    status, headers, _ = _request(registry_referrers, "POST", f"/v2/{unique_repo}/blobs/uploads/")
    assert status == 202
    location = headers["Location"]
    assert location.startswith(registry_referrers.url + "/") or location.startswith("/v2/")


def _blob_path(repo: str, data: bytes) -> str:
    return f"/v2/{repo}/blobs/sha256:{hashlib.sha256(data).hexdigest()}"


def test_fault_proxy_counts_requests_and_bytes_both_ways(
    registry_open: RegistryInstance, fault_proxy: Callable[..., FaultProxy], unique_repo: str
) -> None:
    proxy = fault_proxy(registry_open)
    data = os.urandom(1024 * 1024 + 17)
    assert _upload_blob(proxy.instance, unique_repo, data) == 201
    for _ in range(2):
        status, _, body = _request(proxy.instance, "GET", _blob_path(unique_repo, data))
        assert status == 200 and body == data
    stats = proxy.stats()
    assert stats.requests("POST", "upload") == 1
    assert stats.requests("PUT", "upload") == 1
    assert stats.bytes_up("PUT", "upload") == len(data)
    assert stats.bytes_down("GET", "blob") == 2 * len(data)
    assert stats.duplicates("GET", "blob") == {_blob_path(unique_repo, data): 2}
    assert stats.by_kind[("GET", "blob")].statuses[200] == 2
    proxy.reset()
    assert proxy.stats().requests() == 0


def test_fault_proxy_cuts_a_body_and_the_next_request_succeeds(
    registry_open: RegistryInstance, fault_proxy: Callable[..., FaultProxy], unique_repo: str
) -> None:
    proxy = fault_proxy(registry_open)
    data = os.urandom(300_000)
    assert _upload_blob(registry_open, unique_repo, data) == 201
    rule = proxy.cut("GET", r"/blobs/sha256:", 1000)
    with pytest.raises(http.client.IncompleteRead) as info:
        _request(proxy.instance, "GET", _blob_path(unique_repo, data))
    assert info.value.partial == data[:1000]
    assert rule.fired == 1
    # Resume with a range request, then a whole GET: both pass (times=1).
    status, _, body = _request(
        proxy.instance, "GET", _blob_path(unique_repo, data), headers={"Range": "bytes=1000-"}
    )
    assert status == 206 and body == data[1000:]
    status, _, body = _request(proxy.instance, "GET", _blob_path(unique_repo, data))
    assert status == 200 and body == data
    assert proxy.stats().requests("GET", "blob") == 3


def test_fault_proxy_flips_a_byte(
    registry_open: RegistryInstance, fault_proxy: Callable[..., FaultProxy], unique_repo: str
) -> None:
    proxy = fault_proxy(registry_open)
    data = os.urandom(200_000)
    assert _upload_blob(registry_open, unique_repo, data) == 201
    proxy.flip("GET", r"/blobs/", 150_001)
    status, _, body = _request(proxy.instance, "GET", _blob_path(unique_repo, data))
    assert status == 200 and len(body) == len(data) and body != data
    assert [i for i in range(len(data)) if body[i] != data[i]] == [150_001]
    assert body[150_001] == data[150_001] ^ 0xFF


def test_fault_proxy_throttles_the_nth_request_with_retry_after(
    registry_open: RegistryInstance, fault_proxy: Callable[..., FaultProxy], unique_repo: str
) -> None:
    proxy = fault_proxy(registry_open)
    proxy.status("GET", r"/tags/list", 429, retry_after=2, nth=2, times=2)
    path = f"/v2/{unique_repo}/tags/list"
    statuses = []
    for _ in range(4):
        status, headers, body = _request(proxy.instance, "GET", path)
        statuses.append((status, headers.get("Retry-After")))
        if status == 429:
            assert json.loads(body)["errors"][0]["code"] == "TOOMANYREQUESTS"
    # The repository does not exist, so the registry itself answers 404.
    assert statuses == [(404, None), (429, "2"), (429, "2"), (404, None)]
    assert proxy.stats().by_kind[("GET", "tags")].statuses == {404: 2, 429: 2}


def test_fault_proxy_can_lose_the_answer_of_a_request_that_succeeded(
    registry_open: RegistryInstance, fault_proxy: Callable[..., FaultProxy], unique_repo: str
) -> None:
    proxy = fault_proxy(registry_open)
    assert _upload_blob(registry_open, unique_repo, EMPTY_CONFIG) == 201
    proxy.status("PUT", r"/manifests/", 503, forward=True)
    digest, status, _ = _push_manifest(proxy.instance, unique_repo, "v1", _image(note="lost"))
    assert status == 503
    status, headers, _ = _request(
        registry_open, "HEAD", f"/v2/{unique_repo}/manifests/v1", headers={"Accept": OCI_MANIFEST}
    )
    assert status == 200 and headers["Docker-Content-Digest"] == digest


def test_fault_proxy_drops_an_upload_midway(
    registry_open: RegistryInstance, fault_proxy: Callable[..., FaultProxy], unique_repo: str
) -> None:
    proxy = fault_proxy(registry_open)
    data = os.urandom(500_000)
    proxy.cut_request("PUT", r"/blobs/uploads/", 64 * 1024)
    with pytest.raises((urllib.error.URLError, ConnectionError, http.client.HTTPException)):
        _upload_blob(proxy.instance, unique_repo, data)
    status, _, _ = _request(registry_open, "HEAD", _blob_path(unique_repo, data))
    assert status == 404
    assert _upload_blob(proxy.instance, unique_repo, data) == 201


def test_fault_proxy_delays_before_answering_and_stalls_mid_body(
    registry_open: RegistryInstance, fault_proxy: Callable[..., FaultProxy], unique_repo: str
) -> None:
    proxy = fault_proxy(registry_open)
    proxy.delay("GET", r"^/v2/$", 0.4)
    start = time.monotonic()
    status, _, _ = _request(proxy.instance, "GET", "/v2/")
    assert status == 200
    assert time.monotonic() - start >= 0.4

    data = os.urandom(100_000)
    assert _upload_blob(registry_open, unique_repo, data) == 201
    proxy.delay("GET", r"/blobs/", 0.5, after_bytes=1000)
    with urllib.request.urlopen(proxy.url + _blob_path(unique_repo, data), timeout=30) as resp:
        head = resp.read(1000)
        start = time.monotonic()
        rest = resp.read()
        stalled = time.monotonic() - start
    assert head + rest == data
    assert stalled >= 0.45


def test_fault_proxy_fronts_the_token_server_and_a_tls_registry(
    registry_token: RegistryInstance,
    registry_tls: RegistryInstance,
    fault_proxy: Callable[..., FaultProxy],
    unique_repo: str,
) -> None:
    proxy = fault_proxy(registry_token)
    status, headers, _ = _request(proxy.instance, "GET", "/v2/")
    assert status == 401
    assert f'realm="{proxy.url}/token"' in headers["Www-Authenticate"]
    token = proxy.token([f"repository:{unique_repo}:pull,push"], user="admin")
    auth = {"Authorization": f"Bearer {token}"}
    assert _upload_blob(proxy.instance, unique_repo, b"via proxy", auth) == 201
    assert proxy.stats().requests("GET", "token") == 1

    tls_proxy = fault_proxy(registry_tls)
    assert tls_proxy.options().plain_http is True
    status, _, _ = _request(tls_proxy.instance, "GET", "/v2/")
    assert status == 200
    assert _upload_blob(tls_proxy.instance, unique_repo, b"via tls proxy") == 201


def test_registry_factory_gives_a_private_registry_that_survives_a_restart(
    registry_factory: Callable[..., RunningRegistry], unique_repo: str
) -> None:
    running = registry_factory("open")
    inst = running.instance
    data = b"survives restarts"
    assert _upload_blob(inst, unique_repo, data) == 201
    running.stop()
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"{inst.url}/v2/", timeout=5)
    running.start()
    status, _, body = _request(inst, "GET", _blob_path(unique_repo, data))
    assert status == 200 and body == data
    running.kill()
    assert not any(p.alive() for p in running.processes)


def test_a_missing_registry_binary_fails_integration_tests_loudly(tmp_path: Path) -> None:
    (tmp_path / "conftest.py").write_text("from tests.conftest import *  # noqa: F403\n")
    (tmp_path / "test_needs_registry.py").write_text(
        "def test_needs(registry_open):\n    assert registry_open.host\n"
    )
    env = child_env()
    env["REPLICATOR_TEST_REGISTRY"] = str(tmp_path / "no-such-registry")
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rA", str(tmp_path)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    # pytest.fail in set-up is reported as an error: loud, never a skip.
    assert "1 error" in result.stdout or "1 failed" in result.stdout
    assert "skipped" not in result.stdout
    assert "REPLICATOR_TEST_REGISTRY" in result.stdout


@pytest.mark.anyio
async def test_fault_proxy_serves_async_clients_in_the_test_loop(
    registry_open: RegistryInstance, fault_proxy: Callable[..., FaultProxy], unique_repo: str
) -> None:
    proxy = fault_proxy(registry_open)
    proxy.status("GET", r"^/v2/$", 503, retry_after="1")
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{proxy.url}/v2/") as resp:
            assert resp.status == 503 and resp.headers["Retry-After"] == "1"
        async with session.get(f"{proxy.url}/v2/") as resp:
            assert resp.status == 200

        # Concurrent requests through the proxy from this loop.
        async def tags() -> int:
            async with session.get(f"{proxy.url}/v2/{unique_repo}/tags/list") as r:
                await r.read()
                return r.status

        async with anyio.create_task_group() as tg:
            for _ in range(8):
                tg.start_soon(tags)
    assert proxy.stats().requests("GET", "tags") == 8
    assert proxy.stats().requests("GET", "ping") == 2


def test_registries_die_with_a_killed_test_process(tmp_path: Path) -> None:
    script = (
        "import os, signal, sys\n"
        "from pathlib import Path\n"
        "from tests.infra.registry import start_registry\n"
        "running = start_registry('open', Path(sys.argv[1]))\n"
        "print(running.processes[0].pid, flush=True)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "reg")],
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == -9, result.stderr
    pid = int(result.stdout.strip())
    deadline = time.monotonic() + 20
    while _process_running(pid):
        assert time.monotonic() < deadline, "the registry outlived its test process"
        time.sleep(0.1)


def _process_running(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_shim_can_paginate_referrers_with_link_headers(
    registry_factory: Callable[..., RunningRegistry], unique_repo: str
) -> None:
    inst = registry_factory("referrers").instance
    set_referrers_page_size(inst.url, 2)
    assert _upload_blob(inst, unique_repo, EMPTY_CONFIG) == 201
    subject_digest, _, _ = _push_manifest(inst, unique_repo, "v1", _image(note="subject"))
    subject = {"mediaType": OCI_MANIFEST, "digest": subject_digest, "size": 0}
    pushed = [
        _push_manifest(inst, unique_repo, f"r{i}", _image(subject, f"type/{i % 2}", f"r{i}"))[0]
        for i in range(5)
    ]

    def follow(path: str) -> tuple[list[str], int]:
        seen: list[str] = []
        pages = 0
        next_path: str | None = path
        while next_path:
            status, headers, body = _request(inst, "GET", next_path)
            assert status == 200
            pages += 1
            seen += [m["digest"] for m in json.loads(body)["manifests"]]
            link = headers.get("Link")
            next_path = link.split(">", 1)[0].lstrip("<") if link else None
        return seen, pages

    assert follow(f"/v2/{unique_repo}/referrers/{subject_digest}") == (pushed, 3)
    assert follow(f"/v2/{unique_repo}/referrers/{subject_digest}?artifactType=type/0") == (
        pushed[0::2],
        2,
    )


def test_token_lifetime_can_be_shortened(
    registry_factory: Callable[..., RunningRegistry], unique_repo: str
) -> None:
    inst = registry_factory("token", token_ttl=3).instance
    token = inst.token([f"repository:{unique_repo}:pull"], user="reader")
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["exp"] - claims["iat"] == 3


# -- pure pieces of the infrastructure ----------------------------------------


def test_token_grant_is_the_intersection_of_asked_and_allowed() -> None:
    rules = [
        Rule("repository", "lim/*", frozenset({"pull", "push"})),
        Rule("repository", "shared/*", frozenset({"pull"})),
        Rule("registry", "catalog", frozenset({"*"})),
    ]
    assert grant(
        rules,
        [
            "repository:lim/a/b:pull,push,delete",
            "repository:shared/x:pull,push",
            "repository:other:pull",
            "registry:catalog:*",
            "repository:lim/a/b:pull",
            "garbage",
        ],
    ) == [
        {"type": "repository", "name": "lim/a/b", "actions": ["pull", "push"]},
        {"type": "repository", "name": "shared/x", "actions": ["pull"]},
        {"type": "registry", "name": "catalog", "actions": ["*"]},
    ]
    assert parse_scope("repository:host:5000/x:pull") == ("repository", "host:5000/x", ["pull"])
    assert parse_scope("repository(plugin):x:pull") == ("repository", "x", ["pull"])
    assert parse_scope("nocolon") is None


def test_shim_descriptor_uses_artifact_type_or_config_media_type() -> None:
    subject = {"mediaType": OCI_MANIFEST, "digest": "sha256:" + "a" * 64, "size": 1}
    raw = json.dumps(_image(subject, None, "n")).encode()
    found = referrer_descriptor(raw, None)
    assert found is not None
    digest, desc = found
    assert digest == subject["digest"]
    assert desc == {
        "mediaType": OCI_MANIFEST,
        "digest": "sha256:" + hashlib.sha256(raw).hexdigest(),
        "size": len(raw),
        "artifactType": "application/vnd.oci.empty.v1+json",
        "annotations": {"note": "n"},
    }
    assert referrer_descriptor(json.dumps(_image()).encode(), None) is None
    assert referrer_descriptor(b"not json", None) is None


def test_proxy_classifies_requests_and_counts_rule_matches() -> None:
    assert classify("/v2/") == "ping"
    assert classify("/v2/_catalog") == "catalog"
    assert classify("/token") == "token"
    assert classify("/v2/a/b/blobs/uploads/") == "upload"
    assert classify("/v2/a/b/blobs/uploads/0b1c") == "upload"
    assert classify("/v2/a/blobs/sha256:00") == "blob"
    assert classify("/v2/a/manifests/v1") == "manifest"
    assert classify("/v2/a/referrers/sha256:00") == "referrers"
    assert classify("/v2/a/tags/list") == "tags"
    assert classify("/elsewhere") == "other"
    rule = FaultRule("status", "GET", re.compile("/x"), nth=2, times=2)
    assert [rule.take() for _ in range(5)] == [False, True, True, False, False]
    assert (rule.matched, rule.fired) == (5, 2)
    always = FaultRule("status", None, re.compile("/x"), times=None)
    assert all(always.take() for _ in range(10))
    assert always.matches("PUT", "/v2/x") and not always.matches("PUT", "/v2/y")


def test_location_rewrite_points_upstream_urls_at_the_front() -> None:
    up, front = "https://127.0.0.1:5000", "http://127.0.0.1:6000"
    assert (
        rewrite_location("https://127.0.0.1:5000/v2/a/blobs/uploads/u?_state=s", up, front)
        == "http://127.0.0.1:6000/v2/a/blobs/uploads/u?_state=s"
    )
    assert rewrite_location("/v2/a/blobs/uploads/u", up, front) == "/v2/a/blobs/uploads/u"
    assert rewrite_location("https://s3.example/x", up, front) == "https://s3.example/x"


def test_chunked_upload_streams_through_the_shim_and_the_proxy(
    registry_referrers: RegistryInstance,
    fault_proxy: Callable[..., FaultProxy],
    unique_repo: str,
) -> None:
    proxy = fault_proxy(registry_referrers)
    inst = proxy.instance
    data = os.urandom(3 * 1024 * 1024 + 5)
    chunk = 1024 * 1024 + 1
    status, headers, _ = _request(inst, "POST", f"/v2/{unique_repo}/blobs/uploads/")
    assert status == 202
    location = headers["Location"]
    for start in range(0, len(data), chunk):
        piece = data[start : start + chunk]
        path = location.removeprefix(inst.url)
        status, headers, _ = _request(
            inst,
            "PATCH",
            path,
            piece,
            {
                "Content-Type": "application/octet-stream",
                "Content-Range": f"{start}-{start + len(piece) - 1}",
            },
        )
        assert status == 202
        assert headers["Range"] == f"0-{start + len(piece) - 1}"
        location = headers["Location"]
        assert location.startswith(inst.url + "/") or location.startswith("/")
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    path = location.removeprefix(inst.url)
    status, headers, _ = _request(inst, "PUT", f"{path}&digest={digest}")
    assert status == 201 and headers["Docker-Content-Digest"] == digest
    assert proxy.stats().bytes_up("PATCH", "upload") == len(data)
    status, _, body = _request(inst, "GET", f"/v2/{unique_repo}/blobs/{digest}")
    assert status == 200 and body == data


def test_a_crashed_session_registry_is_brought_back(tmp_path: Path) -> None:
    manager = _Registries(tmp_path)
    try:
        inst = manager.get("open")
        assert _upload_blob(inst, "t/crash", b"kept") == 201
        for running in manager._running.values():
            running.kill()
        again = manager.get("open")
        assert again.host == inst.host
        status, _, body = _request(again, "GET", _blob_path("t/crash", b"kept"))
        assert status == 200 and body == b"kept"
    finally:
        manager.stop_all()


@pytest.mark.slow
def test_soak_kill_loop_and_concurrent_faulted_traffic(
    registry_factory: Callable[..., RunningRegistry],
    fault_proxy: Callable[..., FaultProxy],
    unique_repo: str,
) -> None:
    running = registry_factory("referrers")
    inst = running.instance
    blobs = [os.urandom(50_000 + i) for i in range(20)]
    for data in blobs:
        assert _upload_blob(inst, unique_repo, data) == 201
    # Kill and restart the whole stack repeatedly: content survives, nothing leaks.
    pids: set[int] = set()
    for _ in range(10):
        pids |= {p.pid for p in running.processes if p.pid is not None}
        running.kill()
        running.start()
        status, _, body = _request(inst, "GET", _blob_path(unique_repo, blobs[0]))
        assert status == 200 and body == blobs[0]
    live = {p.pid for p in running.processes}
    assert not any(_process_running(pid) for pid in pids - live)

    # Many concurrent downloads through a proxy that cuts, flips and throttles.
    proxy = fault_proxy(inst)
    proxy.status("GET", r"/blobs/", 503, times=10)
    proxy.cut("GET", r"/blobs/", 1000, nth=11, times=10)
    proxy.flip("GET", r"/blobs/", 10, nth=21, times=10)

    def fetch(data: bytes) -> bytes:
        for _ in range(40):
            try:
                status, _, body = _request(proxy.instance, "GET", _blob_path(unique_repo, data))
            except (http.client.HTTPException, OSError):
                continue
            if status == 200 and hashlib.sha256(body).digest() == hashlib.sha256(data).digest():
                return body
        raise AssertionError("never got an intact blob")

    with concurrent.futures.ThreadPoolExecutor(max_workers=16) as pool:
        results = list(pool.map(fetch, blobs * 5))
    assert results == blobs * 5
    assert [r.fired for r in proxy.rules()] == [10, 10, 10]
    # 30 faulted requests, each retried.
    stats = proxy.stats()
    assert stats.requests("GET", "blob") == len(results) + 30
    assert stats.by_kind[("GET", "blob")].statuses[503] == 10
