"""A referrers-API shim in front of a real registry, run as its own process.

``python -m tests.infra.shim --port P --upstream http://127.0.0.1:R``

distribution 2.8 has no OCI 1.1 referrers API.  This reverse proxy forwards
every request and response unchanged (bodies streamed both ways, ``Location``
rewritten to the shim) and adds what a registry with the API does:

* ``GET /v2/<name>/referrers/<digest>[?artifactType=t]`` answers an OCI image
  index of the manifests pushed *through the shim* whose ``subject`` is that
  digest (descriptor: mediaType, digest, size, artifactType — the manifest's
  ``artifactType`` or else its config media type — and annotations).  With
  ``artifactType`` it filters and sends ``OCI-Filters-Applied: artifactType``.
  An unknown subject gets an empty index, never 404.
* a successful manifest ``PUT`` whose body has a ``subject`` is answered with
  ``OCI-Subject: <subject digest>``;
* a successful manifest ``DELETE`` by digest forgets that manifest as a referrer;
* ``PUT /_shim/config?page_size=N`` makes referrers answers paginated, N per
  page, with ``Link: <...?last=<digest>>; rel="next"`` (0, the default: one page).

The shim knows only what went through it; that is enough for tests.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import re
from typing import Any
from urllib.parse import urlencode

import aiohttp
from aiohttp import web

from .forward import (
    CHUNK,
    client_body,
    front_url,
    has_body,
    make_session,
    request_headers,
    response_headers,
    start_response,
)

log = logging.getLogger("shim")

INDEX_MEDIA_TYPE = "application/vnd.oci.image.index.v1+json"
MAX_MANIFEST = 4 * 1024 * 1024 + 1024
MANIFEST_PATH = re.compile(r"^/v2/(?P<name>.+)/manifests/(?P<ref>[^/]+)$")
REFERRERS_PATH = re.compile(r"^/v2/(?P<name>.+)/referrers/(?P<digest>[^/]+)$")
DIGEST_RE = re.compile(r"^[a-z0-9]+(?:[+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]+$")


class ReferrersStore:
    """Referrer descriptors by (repository, subject digest), in push order."""

    def __init__(self) -> None:
        self._by_subject: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}

    def add(self, repo: str, subject: str, descriptor: dict[str, Any]) -> None:
        """Record ``descriptor`` as a referrer of ``subject`` in ``repo``."""
        self._by_subject.setdefault((repo, subject), {})[descriptor["digest"]] = descriptor

    def forget(self, repo: str, digest: str) -> None:
        """Drop the manifest ``digest`` of ``repo`` from every subject's list."""
        for (r, _subject), entries in self._by_subject.items():
            if r == repo:
                entries.pop(digest, None)

    def list(self, repo: str, subject: str) -> list[dict[str, Any]]:
        """Referrers of ``subject`` in ``repo``."""
        return list(self._by_subject.get((repo, subject), {}).values())


def referrer_descriptor(body: bytes, content_type: str | None) -> tuple[str, dict[str, Any]] | None:
    """(subject digest, descriptor) for a manifest with a subject; None otherwise."""
    try:
        doc = json.loads(body)
    except ValueError:
        return None
    if not isinstance(doc, dict):
        return None
    subject = doc.get("subject")
    if not isinstance(subject, dict) or not isinstance(subject.get("digest"), str):
        return None
    media_type = doc.get("mediaType") or content_type or ""
    desc: dict[str, Any] = {
        "mediaType": media_type,
        "digest": "sha256:" + hashlib.sha256(body).hexdigest(),
        "size": len(body),
    }
    artifact_type = doc.get("artifactType")
    if not artifact_type:
        config = doc.get("config")
        if isinstance(config, dict):
            artifact_type = config.get("mediaType")
    if artifact_type:
        desc["artifactType"] = artifact_type
    annotations = doc.get("annotations")
    if isinstance(annotations, dict) and annotations:
        desc["annotations"] = annotations
    return subject["digest"], desc


class Shim:
    """The shim's state: upstream URL, client session, referrers store."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.store = ReferrersStore()
        #: Referrers per page; 0 = everything in one answer.
        self.page_size = 0
        self._session: aiohttp.ClientSession | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        """The upstream session (created on first use, inside the loop)."""
        if self._session is None:
            self._session = make_session()
        return self._session

    async def close(self) -> None:
        """Close the upstream session."""
        if self._session is not None:
            await self._session.close()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """Entry point for every request."""
        path = request.rel_url.raw_path
        m = REFERRERS_PATH.match(path)
        if m and request.method in ("GET", "HEAD"):
            return self.referrers(request, m["name"], m["digest"])
        m = MANIFEST_PATH.match(path)
        if m and request.method == "PUT":
            return await self.put_manifest(request, m["name"])
        response = await self.forward(request)
        if m and request.method == "DELETE" and 200 <= response.status < 300:
            ref = m["ref"]
            if ":" in ref:
                self.store.forget(m["name"], ref)
        return response

    def referrers(self, request: web.Request, repo: str, digest: str) -> web.Response:
        """Answer the referrers API from the store."""
        if not DIGEST_RE.match(digest):
            return web.json_response(
                {"errors": [{"code": "DIGEST_INVALID", "message": "invalid digest"}]},
                status=400,
            )
        entries = self.store.list(repo, digest)
        headers: dict[str, str] = {}
        wanted = request.query.getall("artifactType", [])
        if wanted:
            entries = [e for e in entries if e.get("artifactType") in wanted]
            headers["OCI-Filters-Applied"] = "artifactType"
        if self.page_size > 0:
            entries, link = self._page(request, repo, digest, entries)
            if link:
                headers["Link"] = link
        index = {"schemaVersion": 2, "mediaType": INDEX_MEDIA_TYPE, "manifests": entries}
        body = json.dumps(index).encode()
        return web.Response(body=body, headers=headers, content_type=INDEX_MEDIA_TYPE)

    def _page(
        self, request: web.Request, repo: str, digest: str, entries: list[dict[str, Any]]
    ) -> tuple[list[dict[str, Any]], str | None]:
        """One page of ``entries`` after ``?last=<digest>`` and the Link to the next."""
        last = request.query.get("last")
        if last:
            digests = [e["digest"] for e in entries]
            start = digests.index(last) + 1 if last in digests else len(entries)
            entries = entries[start:]
        page, rest = entries[: self.page_size], entries[self.page_size :]
        if not rest:
            return page, None
        query = [("last", page[-1]["digest"])]
        query += [("artifactType", t) for t in request.query.getall("artifactType", [])]
        url = f"/v2/{repo}/referrers/{digest}?{urlencode(query)}"
        return page, f'<{url}>; rel="next"'

    async def configure(self, request: web.Request) -> web.Response:
        """``PUT /_shim/config?page_size=N``: paginate referrers answers (0 = never)."""
        try:
            self.page_size = max(0, int(request.query.get("page_size", "0")))
        except ValueError:
            return web.Response(status=400, text="page_size must be an integer")
        return web.json_response({"page_size": self.page_size})

    async def put_manifest(self, request: web.Request, repo: str) -> web.StreamResponse:
        """Forward a manifest PUT; on success record its subject and say OCI-Subject."""
        body = await request.content.read(MAX_MANIFEST)
        headers = request_headers(request)
        front = front_url(request)
        try:
            async with self.session.request(
                "PUT",
                self.upstream + str(request.rel_url),
                headers=headers,
                data=body,
                allow_redirects=False,
            ) as up:
                answer = await up.read()
                out_headers = response_headers(up, self.upstream, front)
                status = up.status
                reason = up.reason
        except aiohttp.ClientError as exc:
            return web.Response(status=502, text=f"shim: upstream failed: {exc}")
        if status == 201:
            found = referrer_descriptor(body, request.headers.get("Content-Type"))
            if found is not None:
                subject, desc = found
                self.store.add(repo, subject, desc)
                out_headers["OCI-Subject"] = subject
                log.info("referrer %s -> %s in %s", desc["digest"], subject, repo)
        return web.Response(status=status, reason=reason, body=answer, headers=out_headers)

    async def forward(self, request: web.Request) -> web.StreamResponse:
        """Forward any request, streaming both bodies."""
        front = front_url(request)
        data = client_body(request) if has_body(request) else None
        resp: web.StreamResponse | None = None
        try:
            async with self.session.request(
                request.method,
                self.upstream + str(request.rel_url),
                headers=request_headers(request),
                data=data,
                allow_redirects=False,
            ) as up:
                resp = await start_response(request, up, response_headers(up, self.upstream, front))
                if request.method != "HEAD":
                    async for chunk in up.content.iter_chunked(CHUNK):
                        await resp.write(chunk)
                await resp.write_eof()
                return resp
        except aiohttp.ClientError as exc:
            if resp is None:
                return web.Response(status=502, text=f"shim: upstream failed: {exc}")
            # Headers are gone already: break the connection so the client notices.
            if request.transport is not None:
                request.transport.close()
            return resp


def build_app(upstream: str) -> web.Application:
    """The shim's aiohttp application."""
    shim = Shim(upstream)
    app = web.Application(client_max_size=MAX_MANIFEST)

    async def on_cleanup(_app: web.Application) -> None:
        await shim.close()

    app.on_cleanup.append(on_cleanup)
    app.router.add_put("/_shim/config", shim.configure)
    app.router.add_route("*", "/{tail:.*}", shim.handle)
    return app


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point: serve until terminated."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--upstream", required=True, help="e.g. http://127.0.0.1:5000")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    web.run_app(
        build_app(args.upstream),
        host=args.host,
        port=args.port,
        print=None,
        access_log=None,
        shutdown_timeout=1.0,
    )


def set_referrers_page_size(url: str, page_size: int) -> None:
    """Make the shim at ``url`` paginate referrers answers (0 = one page); blocking."""
    import urllib.request

    req = urllib.request.Request(f"{url}/_shim/config?page_size={page_size}", method="PUT")
    with urllib.request.urlopen(req, timeout=30) as resp:
        resp.read()


if __name__ == "__main__":
    main()
