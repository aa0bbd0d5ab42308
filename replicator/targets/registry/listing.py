"""Listings of a registry: tags of a repository, the catalog, pagination.

:class:`Listings` reads the paginated listings of the distribution API
(``/v2/<name>/tags/list``, ``/v2/_catalog``) for the registry target and for the
referrers fallback, which lists a repository's tags once to read only the
fallback tags that exist.

Guarantees:

* ``Link: <...>; rel="next"`` pages are followed on the registry's own origin
  only, never twice (a loop is a :class:`~replicator.errors.ProtocolError`),
  and at most ``RegistryOptions.max_pages`` of them.
* A listing body is capped at :data:`LIST_BODY_CAP` bytes and must be a JSON
  object holding a list of names; anything else is a protocol error.
"""

from __future__ import annotations

import json

from yarl import URL

from replicator.errors import NotFoundError
from replicator.targets.registry.errors import protocol_error
from replicator.targets.registry.exchange import RequestSpec
from replicator.targets.registry.transport import Transport

LIST_BODY_CAP = 32 * 1024 * 1024


def pull_scopes(repository: str) -> list[str]:
    """Token scopes for reading ``repository``."""
    return [f"repository:{repository}:pull"]


def parse_next_link(values: list[str]) -> str | None:
    """The target of the ``rel="next"`` entry of ``Link`` header values, if any."""
    for value in values:
        for part in _split_links(value):
            target, _, params = part.partition(";")
            target = target.strip()
            if not (target.startswith("<") and target.endswith(">")):
                continue
            for param in params.split(";"):
                name, _, val = param.strip().partition("=")
                if name.strip().lower() == "rel" and "next" in val.strip().strip('"').split():
                    return target[1:-1]
    return None


def _split_links(value: str) -> list[str]:
    parts: list[str] = []
    depth = 0
    start = 0
    for i, ch in enumerate(value):
        if ch == "<":
            depth += 1
        elif ch == ">":
            depth = max(0, depth - 1)
        elif ch == "," and depth == 0:
            parts.append(value[start:i])
            start = i + 1
    parts.append(value[start:])
    return [p for p in (part.strip() for part in parts) if p]


class PageCapReached(Exception):
    """A listing asked to stop after a number of pages had more."""


class Listings:
    """Paginated listings of one registry through its :class:`Transport`."""

    def __init__(self, transport: Transport) -> None:
        self.transport = transport

    @property
    def _host(self) -> str:
        return self.transport.host

    async def tags(self, repository: str, *, page_size: int | None = None) -> list[str]:
        """All tags of ``repository``, sorted (pages followed up to ``options.max_pages``)."""
        query = {"n": str(page_size)} if page_size else None
        url = self.transport.repo_url(repository, "tags/list", query)
        return sorted(await self._tag_pages(url, repository))

    async def tags_within(self, repository: str, pages: int) -> list[str] | None:
        """The tags of ``repository`` when the listing ends within ``pages`` pages, else None.

        The registry's own page size is used.  A repository the registry does not
        know (``404 NAME_UNKNOWN``) has no tags.
        """
        url = self.transport.repo_url(repository, "tags/list")
        try:
            return await self._tag_pages(url, repository, max_pages=pages)
        except PageCapReached:
            return None
        except NotFoundError as exc:
            if exc.code == "NAME_UNKNOWN":
                return []
            raise

    async def repository_is_new(self, repository: str) -> bool:
        """True when the registry answers ``404 NAME_UNKNOWN`` to ``tags/list?n=1``.

        Any other answer — a list, another error, a 404 without that code — is
        "not known to be new".
        """
        url = self.transport.repo_url(repository, "tags/list", {"n": "1"})
        try:
            await self.transport.request(
                self._list_spec(url, "tags", pull_scopes(repository), repository, "tag list"),
                max_body=LIST_BODY_CAP,
            )
        except NotFoundError as exc:
            return exc.code == "NAME_UNKNOWN"
        return False

    async def catalog(self, *, page_size: int | None = None) -> list[str]:
        """All repositories the registry lists in ``/v2/_catalog``, sorted."""
        query = {"n": str(page_size)} if page_size else None
        items = await self.pages(
            self.transport.url("/v2/_catalog", query),
            key="repositories",
            kind="catalog",
            scopes=["registry:catalog:*"],
            repository=None,
            what="repository catalog",
        )
        return sorted(items)

    async def _tag_pages(
        self, url: URL, repository: str, *, max_pages: int | None = None
    ) -> list[str]:
        return await self.pages(
            url,
            key="tags",
            kind="tags",
            scopes=pull_scopes(repository),
            repository=repository,
            what="tag list",
            max_pages=max_pages,
        )

    async def pages(
        self,
        first: URL,
        *,
        key: str,
        kind: str,
        scopes: list[str],
        repository: str | None,
        what: str,
        max_pages: int | None = None,
    ) -> list[str]:
        """Every item of a paginated listing.

        ``max_pages``: stop quietly beyond that many pages (raises
        :class:`PageCapReached`) instead of failing beyond ``options.max_pages``.
        """
        out: list[str] = []
        url: URL | None = first
        seen: set[str] = set()
        while url is not None:
            seen.add(str(url))
            reply = await self.transport.request(
                self._list_spec(url, kind, scopes, repository, what), max_body=LIST_BODY_CAP
            )
            out.extend(self._items(reply.body, key, repository, what))
            url = self._next_page(reply.headers.getall("Link", []), reply.url, repository, what)
            if url is None:
                break
            if str(url) in seen:
                raise protocol_error(
                    self._host,
                    repository,
                    f"{what}: the next-page link loops to a page already read",
                )
            if max_pages is not None and len(seen) >= max_pages:
                raise PageCapReached
            if len(seen) >= self.transport.options.max_pages:
                raise protocol_error(
                    self._host, repository, f"{what}: more than {len(seen)} pages; giving up"
                )
        return out

    def _next_page(
        self, links: list[str], base: URL, repository: str | None, what: str
    ) -> URL | None:
        link = parse_next_link(links)
        if not link:
            return None
        url = self.transport.resolve(base, link)
        if not self.transport.is_own_origin(url):
            raise protocol_error(self._host, repository, f"{what}: next page is on another host")
        return url

    @staticmethod
    def _list_spec(
        url: URL, kind: str, scopes: list[str], repository: str | None, what: str
    ) -> RequestSpec:
        return RequestSpec(
            method="GET",
            url=url,
            kind=kind,
            scopes=scopes,
            repository=repository,
            what=what,
            ok=(200,),
            headers={"Accept": "application/json"},
        )

    def _items(self, body: bytes, key: str, repository: str | None, what: str) -> list[str]:
        try:
            data = json.loads(body)
        except (ValueError, RecursionError):
            raise protocol_error(self._host, repository, f"{what} is not JSON") from None
        if not isinstance(data, dict):
            raise protocol_error(self._host, repository, f"{what} is not a JSON object")
        items = data.get(key)
        if items is None:
            return []
        if not isinstance(items, list) or not all(isinstance(t, str) for t in items):
            raise protocol_error(self._host, repository, f"{what}: {key!r} is not a list of names")
        return list(items)
