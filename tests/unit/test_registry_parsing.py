"""Pure helpers of the registry target: upload ranges, locations, Link headers, indexes."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest
from hypothesis import given
from hypothesis import strategies as st
from yarl import URL

from replicator.errors import IntegrityError, ReferenceError
from replicator.oci.digest import DigestVerifier, digest_bytes
from replicator.oci.mediatype import OCI_INDEX, OCI_MANIFEST
from replicator.targets.base import RequestStats
from replicator.targets.registry.bodies import ChunkSource, verified
from replicator.targets.registry.fallback import index_entries
from replicator.targets.registry.listing import parse_next_link
from replicator.targets.registry.options import RegistryOptions
from replicator.targets.registry.sessions import parse_range, repository_of_location, with_query
from replicator.targets.registry.transport import Transport

DIGEST = "sha256:" + "ab" * 32


def test_range_header_forms() -> None:
    assert parse_range("0-99") == 100
    assert parse_range("bytes=0-1023") == 1024
    assert parse_range("0-0") == 0
    assert parse_range(None) is None
    assert parse_range("5-10") is None
    assert parse_range("garbage") is None
    assert parse_range("0-") is None


@given(st.integers(min_value=1, max_value=2**40))
def test_range_round_trips_any_acknowledged_size(size: int) -> None:
    if size == 1:
        return  # "0-0" is ambiguous; distribution uses it for empty uploads
    assert parse_range(f"0-{size - 1}") == size


def test_digest_is_appended_to_a_location_with_a_query() -> None:
    loc = URL("http://h/v2/a/blobs/uploads/u?_state=AbC%2Bx%3D%3D&x=1", encoded=True)
    out = with_query(loc, "digest", DIGEST)
    assert str(out) == f"http://h/v2/a/blobs/uploads/u?_state=AbC%2Bx%3D%3D&x=1&digest={DIGEST}"


def test_digest_is_appended_to_a_location_without_a_query() -> None:
    out = with_query(URL("http://h/v2/a/blobs/uploads/u"), "digest", DIGEST)
    assert str(out) == f"http://h/v2/a/blobs/uploads/u?digest={DIGEST}"


def test_repository_is_read_from_an_upload_location() -> None:
    assert repository_of_location(URL("http://h/v2/t/deep/app/blobs/uploads/abc?x=1")) == (
        "t/deep/app"
    )
    assert repository_of_location(URL("http://elsewhere/upload/abc")) is None


def test_next_link_is_found_among_several() -> None:
    assert parse_next_link(['</v2/a/tags/list?n=10&last=b>; rel="next"']) == (
        "/v2/a/tags/list?n=10&last=b"
    )
    assert (
        parse_next_link(['<http://x/prev>; rel="prev", <http://x/next?a=1,2>; rel=next'])
        == "http://x/next?a=1,2"
    )
    assert parse_next_link(['<http://x/p>; rel="prev"']) is None
    assert parse_next_link([]) is None
    assert parse_next_link(["nonsense"]) is None


def test_index_entries_keep_valid_descriptors_only() -> None:
    good = {"mediaType": OCI_MANIFEST, "digest": DIGEST, "size": 10, "artifactType": "sbom/x"}
    raw = json.dumps(
        {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [good, {"bad": 1}, 7]}
    ).encode()
    entries = index_entries(raw)
    assert entries is not None
    assert [e.digest for e in entries] == [DIGEST]
    assert entries[0].artifact_type == "sbom/x"


def test_things_that_are_not_an_index() -> None:
    assert index_entries(b"nope") is None
    assert index_entries(b"[]") is None
    assert index_entries(json.dumps({"mediaType": OCI_MANIFEST, "manifests": []}).encode()) is None
    assert index_entries(json.dumps({"mediaType": OCI_INDEX}).encode()) is None


def test_stats_count_known_kinds_only() -> None:
    stats = RequestStats()
    stats.add("blob_get")
    stats.add("bytes_sent", 10)
    stats.add("no_such_kind")
    assert stats.blob_get == 1
    assert stats.as_dict()["bytes_sent"] == 10
    assert "no_such_kind" not in stats.as_dict()


def _stream(pieces: list[bytes]) -> AsyncIterator[bytes]:
    async def gen() -> AsyncIterator[bytes]:
        for piece in pieces:
            yield piece

    return gen()


def test_chunk_source_cuts_exact_bodies_across_pieces() -> None:
    opened: list[int] = []
    data = b"abcdefghij"

    def opener(offset: int) -> AsyncIterator[bytes]:
        opened.append(offset)
        pieces = [b"abc", b"", b"defgh", b"ij"]
        # Re-opened at an offset: the rest of the data in one piece.
        return _stream(pieces if offset == 0 else [data[offset:]])

    async def scenario() -> list[bytes]:
        source = ChunkSource(opener, 0, DigestVerifier(digest_bytes(data), len(data)))
        out = [b"".join([p async for p in source.body(4)])]
        source.mark()
        first = [p async for p in source.body(4)]
        assert first == [b"efgh"]  # the cut tail of "defgh" opens the next body
        # That body was not acknowledged: sent again, the source re-opens at 4.
        out.append(b"".join([p async for p in source.resend(4, 4)]))
        out.append(b"".join([p async for p in source.body(2)]))
        assert await source.at_end()
        assert source.verifier is not None
        source.verifier.verify()  # the resent chunk was hashed once
        await source.aclose()
        return out

    assert asyncio.run(scenario()) == [b"abcd", b"efgh", b"ij"]
    assert opened == [0, 4]


def test_chunk_source_short_source_is_an_integrity_error() -> None:
    async def scenario() -> None:
        source = ChunkSource(lambda offset: _stream([b"abc"]), 0, None)
        with pytest.raises(IntegrityError):
            _ = [p async for p in source.body(4)]
        assert source.failed is not None

    asyncio.run(scenario())


def test_verified_stream_holds_back_the_last_piece_until_checked() -> None:
    data = [b"one", b"two", b"three"]
    good = digest_bytes(b"".join(data))

    async def collect(digest: str, size: int) -> list[bytes]:
        got: list[bytes] = []
        try:
            async for piece in verified(_stream(data), DigestVerifier(digest, size)):
                got.append(piece)
        except IntegrityError:
            return got
        return [*got, b"<complete>"]

    assert asyncio.run(collect(good, 11)) == [*data, b"<complete>"]
    # Wrong digest: everything but the last piece went out, then the error.
    assert asyncio.run(collect(digest_bytes(b"x"), 11)) == data[:2]
    # Longer than declared: stopped as soon as the size is exceeded.
    assert asyncio.run(collect(good, 5)) == []


class _NoAuth:
    token_requests = 0

    async def authorize(self, session: object, scopes: object) -> dict[str, str]:
        return {}

    async def on_challenge(
        self,
        session: object,
        www: str,
        scopes: object,
        *,
        sent_authorization: str | None = None,
        challenge_round: object = None,
    ) -> dict[str, str]:
        return {}

    def accepted(self, authorization: str) -> None:
        return None


def test_credentials_stay_on_the_registry_origin() -> None:
    t = Transport("Reg.example", RegistryOptions(), _NoAuth())
    assert t.base_url == URL("https://Reg.example")
    assert t.is_own_origin(URL("https://reg.example:443/v2/x"))
    assert t.is_own_origin(URL("https://REG.example/v2/x?y=1"))
    assert not t.is_own_origin(URL("https://reg.example:444/v2/x"))
    assert not t.is_own_origin(URL("http://reg.example/v2/x"))
    assert not t.is_own_origin(URL("https://storage.example/blob"))
    local = Transport("127.0.0.1:5000", RegistryOptions(), _NoAuth())
    assert local.base_url == URL("http://127.0.0.1:5000")  # loopback: plain HTTP


def test_repository_names_are_checked() -> None:
    t = Transport("reg.example", RegistryOptions(), _NoAuth())
    assert str(t.repo_url("library/alpine", "tags/list", {"n": "10"})) == (
        "https://reg.example/v2/library/alpine/tags/list?n=10"
    )
    for bad in ("../x", "a/../b", "A", "", "a/", "x" * 256):
        with pytest.raises(ReferenceError):
            t.repo_url(bad, "tags/list")
