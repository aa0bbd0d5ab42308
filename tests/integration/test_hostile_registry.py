"""Hostile registry answers, through the real console script.

A small hostile server of this module (:class:`Hostile`, an aiohttp server on
its own thread on 127.0.0.1) stands in front of a real docker-registry and
forwards everything, except the requests its rules answer themselves: a
manifest whose bytes do not match the digest asked for, garbage JSON, a
manifest over 4 MiB (with and without ``Content-Length``), a blob longer than
its descriptor, error bodies that are not JSON, ``200`` where ``201`` is the
answer, an upload ``Location`` on another host, endless ``Link`` pagination of
tags and referrers.

Each case must end in one clear ``Error:`` line, the documented exit code, no
traceback, in bounded time; a ``copy`` leaves no tag at its destination and a
``pull`` leaves no file in its output directory.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import ssl
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from replicator.errors import (
    EXIT_AUTH,
    EXIT_INTEGRITY,
    EXIT_NOT_FOUND,
    EXIT_REGISTRY,
)
from replicator.oci import mediatype as mt
from tests.infra.registry import RegistryInstance
from tests.integration.cli_helpers import CliResult, run_cli

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
MiB = 1024 * 1024
_HOP = {"connection", "transfer-encoding", "content-length", "content-encoding", "keep-alive"}


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class Hostile:
    """A forwarding server whose rules answer some requests with hostile replies.

    ``rule(method, path_regex, handler)`` adds a rule (first match wins); every
    request is recorded in ``seen`` as ``(method, path_qs, headers)``.
    """

    def __init__(self, upstream: str | None, ssl_context: ssl.SSLContext | None = None) -> None:
        self.upstream = upstream
        self._ssl_context = ssl_context
        self.rules: list[tuple[str | None, re.Pattern[str], Handler]] = []
        self.seen: list[tuple[str, str, dict[str, str]]] = []
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self.port = 0
        self._thread = threading.Thread(target=self._run, daemon=True)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def rule(self, method: str | None, path: str, handler: Handler) -> None:
        with self._lock:
            self.rules.append((method, re.compile(path), handler))

    def start(self) -> Hostile:
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError("hostile server did not start")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def _run(self) -> None:
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        app = web.Application(client_max_size=1024 * MiB)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        connector = aiohttp.TCPConnector(ssl=self._ssl_context or False)
        async with aiohttp.ClientSession(
            auto_decompress=False, connector=connector
        ) as self._session:
            self._ready.set()
            await self._stop.wait()
        await runner.cleanup()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        with self._lock:
            self.seen.append((request.method, request.path_qs, dict(request.headers)))
            rules = list(self.rules)
        for method, pattern, handler in rules:
            if (method is None or method == request.method) and pattern.search(request.path_qs):
                return await handler(request)
        if self.upstream is None:
            return web.Response(status=404)
        return await self.forward(request)

    async def forward(self, request: web.Request) -> web.Response:
        """Pass the request to the real registry and its answer back."""
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP}
        async with self._session.request(
            request.method,
            f"{self.upstream}{request.path_qs}",
            headers=headers,
            data=body if body else None,
            allow_redirects=False,
        ) as resp:
            data = await resp.read()
            out = [(k, v) for k, v in resp.headers.items() if k.lower() not in _HOP]
            return web.Response(status=resp.status, body=data, headers=_multi(out))


def _multi(pairs: list[tuple[str, str]]) -> Any:
    from multidict import CIMultiDict

    return CIMultiDict(pairs)


@pytest.fixture
def hostile(registry_open: RegistryInstance) -> Iterator[Hostile]:
    """A hostile server in front of the open registry."""
    server = Hostile(registry_open.url).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def elsewhere() -> Iterator[Hostile]:
    """Another host that records whatever reaches it and answers 404 to everything."""
    server = Hostile(None).start()
    try:
        yield server
    finally:
        server.stop()


# -- helpers ------------------------------------------------------------------------------


def http(
    method: str, url: str, body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, bytes, dict[str, str]]:
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, resp.read(), dict(resp.headers.items())
    except urllib.error.HTTPError as err:
        return err.code, err.read(), dict(err.headers.items())


def seed(tmp_path: Path, instance: RegistryInstance, repo: str) -> dict[str, Any]:
    """Push a one-file artifact (readme.txt) with replicator itself; its manifest and blobs."""
    work = tmp_path / "seed"
    work.mkdir(exist_ok=True)
    # The content names the repository: two seeds pushed within the same second
    # (the created annotation has one-second resolution) must still differ.
    (work / "readme.txt").write_bytes(f"hostile registries are everywhere ({repo})\n".encode() * 50)
    ref = f"{instance.host}/{repo}:v1"
    result = run_cli("push", ref, str(work / "readme.txt"), home=tmp_path / "home")
    assert result.code == 0, result.stderr
    status, raw, _ = http(
        "GET", f"{instance.url}/v2/{repo}/manifests/v1", headers={"Accept": mt.OCI_MANIFEST}
    )
    assert status == 200
    manifest = json.loads(raw)
    return {"raw": raw, "digest": sha256(raw), "manifest": manifest, "repo": repo}


def tag_exists(instance: RegistryInstance, repo: str, tag: str) -> bool:
    status, _, _ = http(
        "HEAD",
        f"{instance.url}/v2/{repo}/manifests/{tag}",
        headers={"Accept": ",".join([mt.OCI_MANIFEST, mt.OCI_INDEX])},
    )
    return status == 200


def blob_exists(instance: RegistryInstance, repo: str, digest: str) -> bool:
    status, _, _ = http("HEAD", f"{instance.url}/v2/{repo}/blobs/{digest}")
    return status == 200


def cli(tmp_path: Path, *args: str, timeout: float = 90) -> tuple[CliResult, float]:
    started = time.monotonic()
    result = run_cli(*args, home=tmp_path / "home", timeout=timeout)
    return result, time.monotonic() - started


def assert_one_error(result: CliResult, code: int, *fragments: str) -> str:
    """One ``Error:`` line on stderr (besides JSON log records), exit ``code``, no traceback."""
    assert "Traceback" not in result.output, result.stderr
    lines = result.non_log_stderr_lines()
    assert len(lines) == 1, result.stderr
    line = lines[0]
    assert line.startswith("Error: "), line
    assert "internal error" not in line, line
    for fragment in fragments:
        assert fragment.lower() in line.lower(), line
    assert result.code == code, (result.code, result.stderr)
    return line


def assert_copy_failed(result: CliResult, code: int, side: str, *fragments: str) -> str:
    """A failed copy: one line naming the failing ``side``; exit ``code``, exactly.

    A failure met after the root was read ends the copy as "copy incomplete",
    quoting its most severe cause and exiting with that cause's code (a wrong
    password 4, content that does not verify 6, a hostile answer 7): a
    scheduler tells them apart by the code alone.
    """
    return assert_one_error(result, code, side, *fragments)


def fixed(status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        await request.read()
        if request.method == "HEAD":
            return web.Response(status=status, headers=headers or {})
        return web.Response(status=status, body=body, headers=headers or {})

    return handler


def manifest_answer(
    raw: bytes, digest: str | None = None, media_type: str = mt.OCI_MANIFEST
) -> Handler:
    """Serve ``raw`` as a manifest (HEAD too), claiming ``digest`` (default: its own)."""
    headers = {"Content-Type": media_type, "Docker-Content-Digest": digest or sha256(raw)}

    async def handler(request: web.Request) -> web.StreamResponse:
        if request.method == "HEAD":
            return web.Response(status=200, headers={**headers, "Content-Length": str(len(raw))})
        return web.Response(status=200, body=raw, headers=headers)

    return handler


def nothing_pulled(out: Path) -> None:
    files = [p for p in out.rglob("*")] if out.exists() else []
    assert files == [], files


# -- a manifest that is not what was asked for ---------------------------------------------


def test_manifest_bytes_not_matching_the_digest(
    hostile: Hostile, registry_open: RegistryInstance, unique_repo: Any, tmp_path: Path
) -> None:
    real = seed(tmp_path, registry_open, str(unique_repo))
    other = seed(tmp_path, registry_open, str(unique_repo()))
    # Every request for the real digest gets the other manifest's bytes, with the
    # real digest claimed in Docker-Content-Digest.
    hostile.rule(
        None, f"/manifests/{real['digest']}$", manifest_answer(other["raw"], real["digest"])
    )
    ref = f"{hostile.host}/{real['repo']}@{real['digest']}"
    dst_repo = str(unique_repo())
    out = tmp_path / "out"

    result, _ = cli(tmp_path, "manifest", "fetch", ref)
    assert_one_error(result, EXIT_INTEGRITY, real["digest"])
    assert other["raw"].decode() not in result.stdout

    result, _ = cli(tmp_path, "pull", "-o", str(out), ref)
    assert_one_error(result, EXIT_INTEGRITY)
    nothing_pulled(out)

    result, _ = cli(tmp_path, "copy", "-r", ref, f"{registry_open.host}/{dst_repo}:v1")
    assert_copy_failed(result, EXIT_INTEGRITY, "source")
    assert not tag_exists(registry_open, dst_repo, "v1")


def test_tagged_manifest_not_matching_its_claimed_digest(
    hostile: Hostile, registry_open: RegistryInstance, unique_repo: Any, tmp_path: Path
) -> None:
    real = seed(tmp_path, registry_open, str(unique_repo))
    other = seed(tmp_path, registry_open, str(unique_repo()))
    hostile.rule("GET", "/manifests/v1$", manifest_answer(other["raw"], real["digest"]))
    ref = f"{hostile.host}/{real['repo']}:v1"
    dst_repo = str(unique_repo())

    result, _ = cli(tmp_path, "pull", "-o", str(tmp_path / "out"), ref)
    assert_one_error(result, EXIT_INTEGRITY)
    nothing_pulled(tmp_path / "out")

    result, _ = cli(tmp_path, "copy", ref, f"{registry_open.host}/{dst_repo}:v1")
    assert_copy_failed(result, EXIT_INTEGRITY, "source")
    assert not tag_exists(registry_open, dst_repo, "v1")


# -- garbage and oversized manifests ----------------------------------------------------------

GARBAGE = b'{"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json", "lay'


@pytest.mark.parametrize(
    "body",
    [GARBAGE, b"<html><body>Welcome to nginx!</body></html>", b'{"schemaVersion": "two"}', b"[]"],
    ids=["truncated", "html", "wrong-types", "array"],
)
def test_garbage_manifest_is_a_protocol_error(
    hostile: Hostile,
    registry_open: RegistryInstance,
    unique_repo: Any,
    tmp_path: Path,
    body: bytes,
) -> None:
    real = seed(tmp_path, registry_open, str(unique_repo))
    # A consistent liar: HEAD and GET agree, the digest is the garbage's own.
    hostile.rule(None, "/manifests/v1$", manifest_answer(body))
    hostile.rule(None, f"/manifests/{sha256(body)}$", manifest_answer(body))
    ref = f"{hostile.host}/{real['repo']}:v1"
    dst_repo = str(unique_repo())

    # (discover needs only the root's digest, which HEAD gives: it is not asked here)
    result, _ = cli(tmp_path, "pull", "-o", str(tmp_path / "out"), ref)
    assert_one_error(result, EXIT_REGISTRY, real["repo"])
    nothing_pulled(tmp_path / "out")

    result, _ = cli(tmp_path, "copy", "-r", ref, f"{registry_open.host}/{dst_repo}:v1")
    assert_copy_failed(result, EXIT_REGISTRY, "source")
    assert not tag_exists(registry_open, dst_repo, "v1")


def _oversized_index() -> bytes:
    doc = {
        "schemaVersion": 2,
        "mediaType": mt.OCI_INDEX,
        "manifests": [],
        "annotations": {"padding": "x" * (4 * MiB)},
    }
    return json.dumps(doc).encode()


def test_manifest_over_4_mib_is_refused(
    hostile: Hostile, registry_open: RegistryInstance, unique_repo: Any, tmp_path: Path
) -> None:
    real = seed(tmp_path, registry_open, str(unique_repo))
    big = _oversized_index()
    assert len(big) > 4 * MiB
    hostile.rule(None, "/manifests/v1$", manifest_answer(big, media_type=mt.OCI_INDEX))
    hostile.rule(None, f"/manifests/{sha256(big)}$", manifest_answer(big, media_type=mt.OCI_INDEX))
    ref = f"{hostile.host}/{real['repo']}:v1"
    dst_repo = str(unique_repo())

    result, _ = cli(tmp_path, "manifest", "fetch", ref)
    assert_one_error(result, EXIT_REGISTRY)
    assert result.stdout == ""
    result, _ = cli(tmp_path, "pull", "-o", str(tmp_path / "out"), ref)
    assert_one_error(result, EXIT_REGISTRY)
    nothing_pulled(tmp_path / "out")
    result, _ = cli(tmp_path, "copy", "-r", ref, f"{registry_open.host}/{dst_repo}:v1")
    assert_copy_failed(result, EXIT_REGISTRY, "source")
    assert not tag_exists(registry_open, dst_repo, "v1")


def test_endless_manifest_without_length_is_cut_off(
    hostile: Hostile, registry_open: RegistryInstance, unique_repo: Any, tmp_path: Path
) -> None:
    real = seed(tmp_path, registry_open, str(unique_repo))
    sent: list[int] = []

    async def endless(request: web.Request) -> web.StreamResponse:
        headers = {"Content-Type": mt.OCI_INDEX}
        if request.method == "HEAD":
            return web.Response(status=200, headers=headers)
        resp = web.StreamResponse(status=200, headers=headers)
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        await resp.write(b'{"schemaVersion":2,"manifests":[],"annotations":{"a":"')
        total = 0
        try:
            while total < 64 * MiB:  # far beyond any cap; the client must hang up first
                await resp.write(b"y" * 65536)
                total += 65536
        except (ConnectionError, RuntimeError):
            pass
        sent.append(total)
        return resp

    hostile.rule(None, "/manifests/v1$", endless)
    result, took = cli(tmp_path, "manifest", "fetch", f"{hostile.host}/{real['repo']}:v1")
    assert_one_error(result, EXIT_REGISTRY)
    assert took < 60
    assert result.stdout == ""


# -- a blob longer than its descriptor ----------------------------------------------------


def test_blob_longer_than_its_descriptor(
    hostile: Hostile, registry_open: RegistryInstance, unique_repo: Any, tmp_path: Path
) -> None:
    real = seed(tmp_path, registry_open, str(unique_repo))
    layer = real["manifest"]["layers"][0]
    status, data, _ = http("GET", f"{registry_open.url}/v2/{real['repo']}/blobs/{layer['digest']}")
    assert status == 200 and len(data) == layer["size"]
    hostile.rule(
        "GET",
        f"/blobs/{layer['digest']}$",
        fixed(200, data + b"and a little more", {"Content-Type": "application/octet-stream"}),
    )
    ref = f"{hostile.host}/{real['repo']}:v1"
    dst_repo = str(unique_repo())

    result, _ = cli(tmp_path, "pull", "-o", str(tmp_path / "out"), ref)
    assert_one_error(result, EXIT_INTEGRITY, layer["digest"][:19])
    nothing_pulled(tmp_path / "out")

    result, _ = cli(tmp_path, "copy", "-r", ref, f"{registry_open.host}/{dst_repo}:v1")
    assert_copy_failed(result, EXIT_INTEGRITY, layer["digest"][:19], "more than")
    assert not tag_exists(registry_open, dst_repo, "v1")
    assert not blob_exists(registry_open, dst_repo, layer["digest"])


def test_copy_blames_the_source_for_a_blob_longer_than_its_descriptor(
    hostile: Hostile, registry_open: RegistryInstance, unique_repo: Any, tmp_path: Path
) -> None:
    real = seed(tmp_path, registry_open, str(unique_repo))
    layer = real["manifest"]["layers"][0]
    _, data, _ = http("GET", f"{registry_open.url}/v2/{real['repo']}/blobs/{layer['digest']}")
    hostile.rule("GET", f"/blobs/{layer['digest']}$", fixed(200, data + b"more"))
    dst = f"{registry_open.host}/{unique_repo()}:v1"
    result, _ = cli(tmp_path, "copy", "-r", f"{hostile.host}/{real['repo']}:v1", dst)
    line = assert_copy_failed(result, EXIT_INTEGRITY, "more than")
    assert "source: " in line and "destination: " not in line, line


# -- error bodies that are not JSON ---------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "code", "word"),
    [(404, EXIT_NOT_FOUND, "not found"), (403, EXIT_AUTH, "denied"), (500, EXIT_REGISTRY, "500")],
)
def test_error_body_that_is_not_json(
    hostile: Hostile,
    registry_open: RegistryInstance,
    unique_repo: Any,
    tmp_path: Path,
    status: int,
    code: int,
    word: str,
) -> None:
    real = seed(tmp_path, registry_open, str(unique_repo))
    page = b"<html><head><title>Oops</title></head><body>" + b"<p>nope</p>" * 2000 + b"</body>"
    hostile.rule(None, "/manifests/v1$", fixed(status, page, {"Content-Type": "text/html"}))
    result, took = cli(tmp_path, "manifest", "fetch", f"{hostile.host}/{real['repo']}:v1")
    line = assert_one_error(result, code, word)
    assert "<html" not in line and "nope" not in line
    assert took < 60


def test_upload_error_body_that_is_not_json_leaves_no_tag(
    hostile: Hostile, registry_open: RegistryInstance, unique_repo: Any, tmp_path: Path
) -> None:
    real = seed(tmp_path, registry_open, str(unique_repo))
    hostile.rule(
        "POST", "/blobs/uploads/", fixed(400, b"Bad Request\r\n", {"Content-Type": "text/plain"})
    )
    dst_repo = str(unique_repo())
    src = f"{registry_open.host}/{real['repo']}:v1"
    result, _ = cli(tmp_path, "copy", "-r", src, f"{hostile.host}/{dst_repo}:v1")
    assert_copy_failed(result, EXIT_REGISTRY, "destination", "400")
    assert not tag_exists(registry_open, dst_repo, "v1")


# -- 200 where 201 is the answer -----------------------------------------------------------


def test_upload_closed_with_200_but_not_stored(
    hostile: Hostile, registry_open: RegistryInstance, unique_repo: Any, tmp_path: Path
) -> None:
    """The closing PUT of an upload answers 200 (not 201) and stores nothing."""
    hostile.rule("PUT", r"/blobs/uploads/.*digest=", fixed(200))
    (tmp_path / "file.txt").write_bytes(b"a file\n")
    ref = f"{hostile.host}/{unique_repo}:v1"
    result, _ = cli(tmp_path, "push", ref, str(tmp_path / "file.txt"))
    assert result.code != 0
    assert_one_error(result, result.code)
    assert result.code in (EXIT_REGISTRY, EXIT_NOT_FOUND)
    assert not tag_exists(registry_open, str(unique_repo), "v1")


def test_manifest_put_answered_200_is_not_a_success(
    hostile: Hostile, registry_open: RegistryInstance, unique_repo: Any, tmp_path: Path
) -> None:
    """The manifest PUT answers 200 (not 201) without storing anything: push must not succeed."""
    hostile.rule("PUT", r"/manifests/", fixed(200))
    (tmp_path / "file.txt").write_bytes(b"a file\n")
    ref = f"{hostile.host}/{unique_repo}:v1"
    result, _ = cli(tmp_path, "push", ref, str(tmp_path / "file.txt"))
    assert_one_error(result, EXIT_REGISTRY, "201")
    assert "Pushed" not in result.stdout
    assert not tag_exists(registry_open, str(unique_repo), "v1")

    src = seed(tmp_path, registry_open, str(unique_repo()))
    dst_repo = str(unique_repo())
    result, _ = cli(
        tmp_path,
        "copy",
        "-r",
        f"{registry_open.host}/{src['repo']}:v1",
        f"{hostile.host}/{dst_repo}:v1",
    )
    assert_copy_failed(result, EXIT_REGISTRY, "destination", "201")
    assert not tag_exists(registry_open, dst_repo, "v1")


# -- an upload Location on another host ------------------------------------------------------


def test_upload_location_on_another_host(
    registry_basic: RegistryInstance, elsewhere: Hostile, unique_repo: str, tmp_path: Path
) -> None:
    hostile = Hostile(registry_basic.url).start()
    try:

        async def foreign(request: web.Request) -> web.StreamResponse:
            await request.read()
            location = f"http://{elsewhere.host}/v2/{unique_repo}/blobs/uploads/abc?_state=x"
            return web.Response(status=202, headers={"Location": location, "Range": "0-0"})

        hostile.rule("POST", "/blobs/uploads/", foreign)
        (tmp_path / "file.txt").write_bytes(b"secret company data\n")
        assert registry_basic.username and registry_basic.password
        result, _ = cli(
            tmp_path,
            "push",
            "-u",
            registry_basic.username,
            "-p",
            registry_basic.password,
            f"{hostile.host}/{unique_repo}:v1",
            str(tmp_path / "file.txt"),
        )
    finally:
        hostile.stop()
    assert_one_error(result, EXIT_REGISTRY, "another host")
    assert registry_basic.password not in result.output
    # Nothing, credentials least of all, went to the other host.
    assert elsewhere.seen == []


# -- endless pagination ---------------------------------------------------------------------


def _tags_page(repo: str, *, loop: bool) -> Handler:
    count = {"n": 0}

    async def handler(request: web.Request) -> web.StreamResponse:
        count["n"] += 1
        n = count["n"]
        last = "t0" if loop else f"t{n}"
        link = f'</v2/{repo}/tags/list?n=1&last={last}>; rel="next"'
        body = json.dumps({"name": repo, "tags": [f"t{n}"]}).encode()
        return web.Response(
            status=200, body=body, headers={"Content-Type": "application/json", "Link": link}
        )

    return handler


@pytest.mark.parametrize("loop", [True, False], ids=["same-page-again", "endless-pages"])
def test_endless_tag_pagination(
    hostile: Hostile, registry_open: RegistryInstance, unique_repo: str, tmp_path: Path, loop: bool
) -> None:
    hostile.rule("GET", "/tags/list", _tags_page(unique_repo, loop=loop))
    result, took = cli(tmp_path, "repo", "tags", f"{hostile.host}/{unique_repo}")
    assert_one_error(result, EXIT_REGISTRY, "page")
    assert result.stdout == ""
    assert took < 60


def test_tag_listing_of_a_referrers_walk_gives_up_quietly_after_three_pages(
    hostile: Hostile, registry_open: RegistryInstance, unique_repo: Any, tmp_path: Path
) -> None:
    """The walk's tag listing (to skip absent fallback tags) is an optimisation only.

    Endless tag pages at the source: the listing is abandoned after three pages,
    every fallback tag is then read one by one, and the copy -r completes with
    the referrer.
    """
    real = seed(tmp_path, registry_open, str(unique_repo))
    ref = f"{registry_open.host}/{real['repo']}:v1"
    note = tmp_path / "note.txt"
    note.write_text("a note\n")
    attached = run_cli(
        "attach", "--artifact-type", "example/note", ref, str(note), home=tmp_path / "home"
    )
    assert attached.code == 0, attached.stderr
    hostile.rule("GET", "/tags/list", _tags_page(real["repo"], loop=False))
    dst_repo = str(unique_repo())
    dst = f"{registry_open.host}/{dst_repo}:v1"
    result, took = cli(tmp_path, "copy", "-r", f"{hostile.host}/{real['repo']}:v1", dst)
    assert result.code == 0, result.stderr
    assert took < 60
    listings = [path for method, path, _ in hostile.seen if "/tags/list" in path]
    assert len(listings) == 3, listings
    fallback_reads = [p for m, p, _ in hostile.seen if m == "GET" and "/manifests/sha256-" in p]
    assert len(fallback_reads) == 2, fallback_reads  # the artifact's (found) and the note's
    found = run_cli("discover", "-o", "json", dst, home=tmp_path / "home")
    assert found.code == 0, found.stderr
    assert "example/note" in found.stdout


@pytest.mark.parametrize("loop", [True, False], ids=["same-page-again", "endless-pages"])
def test_endless_referrers_pagination(
    hostile: Hostile,
    registry_open: RegistryInstance,
    unique_repo: Any,
    tmp_path: Path,
    loop: bool,
) -> None:
    real = seed(tmp_path, registry_open, str(unique_repo))
    count = {"n": 0}

    async def referrers(request: web.Request) -> web.StreamResponse:
        count["n"] += 1
        n = 0 if loop else count["n"]
        fake = {
            "mediaType": mt.OCI_MANIFEST,
            "digest": real["digest"],
            "size": len(real["raw"]),
            "artifactType": "loop/example",
        }
        index = {"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": [fake]}
        link = f'<{request.path}?page={n}>; rel="next"'
        return web.Response(
            status=200,
            body=json.dumps(index).encode(),
            headers={"Content-Type": mt.OCI_INDEX, "Link": link},
        )

    hostile.rule("GET", "/referrers/", referrers)
    ref = f"{hostile.host}/{real['repo']}:v1"
    result, took = cli(tmp_path, "discover", "-o", "json", ref)
    assert_one_error(result, EXIT_REGISTRY, "page")
    assert took < 60
    dst_repo = str(unique_repo())
    result, took = cli(tmp_path, "copy", "-r", ref, f"{registry_open.host}/{dst_repo}:v1")
    assert_copy_failed(result, EXIT_REGISTRY, "source", "page")
    assert not tag_exists(registry_open, dst_repo, "v1")
    assert took < 60
