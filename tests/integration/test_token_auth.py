"""Authentication against real registries: token auth (with a real token server) and Basic.

Requests go through the real registry client (:class:`RegistryTarget`) with a
real :class:`Authenticator`; the token server's ``/_log`` shows
which scopes each token request asked for.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import anyio
import pytest

from replicator.errors import AuthenticationError, DeniedError
from replicator.oci.descriptor import Descriptor
from replicator.oci.digest import descriptor_for
from replicator.targets.registry.auth import Authenticator
from replicator.targets.registry.client import RegistryTarget
from replicator.targets.registry.options import Credentials, RegistryOptions, RetryPolicy
from tests.infra.registry import TOKEN_SERVICE, RegistryInstance, RunningRegistry

T = TypeVar("T")


def run(factory: Callable[[], Awaitable[T]]) -> T:
    async def main() -> T:
        return await factory()

    return asyncio.run(main())


class Client:
    """A real :class:`RegistryTarget` plus the blob helpers these tests need."""

    def __init__(self, instance: RegistryInstance, credentials: Credentials | None) -> None:
        options = RegistryOptions(
            credentials=credentials, plain_http=True, retry=RetryPolicy(attempts=2)
        )
        self.auth = Authenticator(instance.host, credentials)
        self.target = RegistryTarget(instance.host, options, authenticator=self.auth)

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.target.aclose()

    async def ping(self) -> None:
        await self.target.ping()

    async def push_blob(self, repo: str, data: bytes) -> Descriptor:
        desc = descriptor_for(data, "application/octet-stream")

        async def opener(offset: int) -> AsyncIterator[bytes]:
            yield data[offset:]

        await self.target.push_blob(repo, desc, opener)
        return desc

    async def pull_blob(self, repo: str, desc: Descriptor) -> bytes:
        return b"".join([chunk async for chunk in self.target.fetch_blob(repo, desc)])

    async def mount(self, repo: str, source: str, desc: Descriptor) -> bool:
        return await self.target.mount_blob(repo, desc, source)


def token_requests_for(instance: RegistryInstance, *repos: str) -> list[dict[str, Any]]:
    """Token-server log entries whose scopes mention any of ``repos``."""
    return [
        e
        for e in instance.token_log()
        if any(f":{repo}:" in scope for scope in e["scopes"] for repo in repos)
    ]


def test_reader_pulls_what_admin_pushed(registry_token: RegistryInstance, unique_repo: str) -> None:
    data = b"pulled by a reader"
    other = unique_repo + "-other"

    async def scenario() -> bytes:
        async with Client(registry_token, registry_token.credentials("admin")) as admin:
            desc = await admin.push_blob(unique_repo, data)
            other_desc = await admin.push_blob(other, b"other")
        async with Client(registry_token, registry_token.credentials("reader")) as reader:
            first = await reader.pull_blob(unique_repo, desc)
            assert reader.target.stats.blob_get == 2  # the 401, then with a token
            assert await reader.pull_blob(unique_repo, desc) == first
            # One token for the pull scope, reused for the second request.
            assert reader.target.stats.token == 1
            assert reader.target.stats.blob_get == 3
            # Another repository: the realm is known, its token is fetched before
            # the request, so no 401 round trip either.
            assert await reader.pull_blob(other, other_desc) == b"other"
            assert reader.target.stats.token == 2
            assert reader.target.stats.blob_get == 4
            return first

    assert run(scenario) == data


def test_push_with_pull_only_rights_is_denied(
    registry_token: RegistryInstance, unique_repo: str
) -> None:
    async def scenario() -> None:
        async with Client(registry_token, registry_token.credentials("reader")) as reader:
            await reader.push_blob(unique_repo, b"not allowed")

    with pytest.raises(DeniedError, match="denied") as info:
        run(scenario)
    assert info.value.registry == registry_token.host
    granted = [e["granted"] for e in token_requests_for(registry_token, unique_repo)]
    assert granted and all(
        g == [{"type": "repository", "name": unique_repo, "actions": ["pull"]}] for g in granted
    )


def test_anonymous_push_asks_to_log_in(registry_token: RegistryInstance, unique_repo: str) -> None:
    async def scenario() -> None:
        async with Client(registry_token, None) as anonymous:
            await anonymous.push_blob(unique_repo, b"anonymous")

    with pytest.raises(AuthenticationError, match="authentication required"):
        run(scenario)


def test_mount_gets_both_scopes_in_one_token_request(
    registry_token: RegistryInstance, unique_repo: Any
) -> None:
    source = unique_repo("shared")
    target = unique_repo("lim")
    data = b"mounted across repositories"

    async def scenario() -> None:
        async with Client(registry_token, registry_token.credentials("admin")) as admin:
            desc = await admin.push_blob(source, data)
        limited = registry_token.credentials("limited")
        async with Client(registry_token, limited) as client:
            assert await client.mount(target, source, desc) is True
            assert await client.pull_blob(target, desc) == data

    run(scenario)
    entries = [e for e in token_requests_for(registry_token, target) if e["user"] == "limited"]
    mount_requests = [e for e in entries if any(f":{source}:" in s for s in e["scopes"])]
    assert len(mount_requests) == 1, entries
    (mount_request,) = mount_requests
    assert sorted(mount_request["scopes"]) == sorted(
        [f"repository:{source}:pull", f"repository:{target}:pull,push"]
    )
    granted = {g["name"]: sorted(g["actions"]) for g in mount_request["granted"]}
    assert granted == {source: ["pull"], target: ["pull", "push"]}


def test_wrong_password_fails_without_showing_it(registry_token: RegistryInstance) -> None:
    secret = "Wrong-Passw0rd-not-shown"

    async def scenario() -> None:
        async with Client(registry_token, Credentials("admin", secret)) as client:
            await client.ping()

    with pytest.raises(AuthenticationError) as info:
        run(scenario)
    assert "authentication failed (wrong user name or password?)" in str(info.value)
    assert secret not in str(info.value)
    assert secret not in repr(info.value)


def test_right_password_pings(registry_token: RegistryInstance) -> None:
    async def scenario() -> None:
        async with Client(registry_token, registry_token.credentials("reader")) as client:
            await client.ping()

    run(scenario)


def test_basic_auth_push_and_pull(registry_basic: RegistryInstance, unique_repo: str) -> None:
    data = b"basic auth blob"

    async def scenario() -> bytes:
        async with Client(registry_basic, registry_basic.credentials()) as client:
            desc = await client.push_blob(unique_repo, data)
            assert client.auth.scheme == "basic"
            # Basic goes out up front now: one GET, no 401 round trip.
            pulled = await client.pull_blob(unique_repo, desc)
            assert client.target.stats.blob_get == 1
            return pulled

    assert run(scenario) == data


def test_basic_auth_wrong_password_fails(registry_basic: RegistryInstance) -> None:
    secret = "definitely-Wrong-4242"
    user = registry_basic.username
    assert user is not None

    async def scenario() -> None:
        async with Client(registry_basic, Credentials(user, secret)) as client:
            await client.ping()

    with pytest.raises(AuthenticationError, match="wrong user name or password") as info:
        run(scenario)
    assert secret not in str(info.value)


def test_basic_registry_without_credentials_asks_to_log_in(
    registry_basic: RegistryInstance,
) -> None:
    async def scenario() -> None:
        async with Client(registry_basic, None) as client:
            await client.ping()

    with pytest.raises(AuthenticationError, match="replicator login"):
        run(scenario)


def test_concurrent_requests_share_one_token_request(
    registry_token: RegistryInstance, unique_repo: str
) -> None:
    data = b"fetched eight times at once"

    async def scenario() -> list[bytes]:
        async with Client(registry_token, registry_token.credentials("admin")) as admin:
            desc = await admin.push_blob(unique_repo, data)
        async with Client(registry_token, registry_token.credentials("reader")) as reader:
            results = await asyncio.gather(*(reader.pull_blob(unique_repo, desc) for _ in range(8)))
            assert reader.target.stats.token == 1
            return list(results)

    assert run(scenario) == [data] * 8


def _refresh_token_for(instance: RegistryInstance, user: str) -> str:
    """A refresh token from the token server's OAuth2 password grant."""
    assert instance.token_url is not None
    form = urllib.parse.urlencode(
        {
            "grant_type": "password",
            "username": user,
            "password": instance.users[user],
            "service": TOKEN_SERVICE,
            "client_id": "test",
            "access_type": "offline",
        }
    ).encode()
    with urllib.request.urlopen(f"{instance.token_url}/token", data=form, timeout=30) as resp:
        token: str = json.loads(resp.read())["refresh_token"]
    return token


def test_identity_token_pulls_through_the_oauth2_refresh_grant(
    registry_token: RegistryInstance, unique_repo: str
) -> None:
    data = b"pulled with an identity token"
    identity = _refresh_token_for(registry_token, "reader")

    async def scenario() -> bytes:
        async with Client(registry_token, registry_token.credentials("admin")) as admin:
            desc = await admin.push_blob(unique_repo, data)
        async with Client(registry_token, Credentials(identity_token=identity)) as client:
            return await client.pull_blob(unique_repo, desc)

    assert run(scenario) == data
    entries = [e for e in token_requests_for(registry_token, unique_repo) if e["user"] == "reader"]
    assert entries
    assert all(
        e["method"] == "POST"
        and e["grant_type"] == "refresh_token"
        and e["client_id"] == "replicator"
        for e in entries
    )


def test_unknown_identity_token_is_an_authentication_error(
    registry_token: RegistryInstance, unique_repo: str
) -> None:
    async def scenario() -> None:
        async with Client(registry_token, Credentials(identity_token="no-such-refresh")) as c:
            await c.ping()

    with pytest.raises(AuthenticationError, match="authentication failed") as info:
        run(scenario)
    assert "no-such-refresh" not in str(info.value)


# -- tokens the registry stops accepting before they say they expire -------------------------


def test_tokens_refused_again_and_again_in_one_run_are_renewed_each_time(
    registry_factory: Callable[..., RunningRegistry], unique_repo: str
) -> None:
    # The token server claims 300 s of life for every token, but the registry
    # refuses each one about 2 s after it was issued (as with clock skew or
    # revocation): a run that keeps reading meets refused tokens again and again,
    # each one the replacement of the one before.
    instance = registry_factory("token", token_real_ttl=2).instance
    data = b"read again while tokens keep dying"

    async def scenario() -> tuple[int, int]:
        async with Client(instance, instance.credentials("reader")) as reader:
            async with Client(instance, instance.credentials("admin")) as admin:
                desc = await admin.push_blob(unique_repo, data)
            reads = 0
            give_up = time.monotonic() + 60
            # The first token and two renewals: the second renewal replaces a
            # token that was itself issued after a refusal.
            while reader.target.stats.token < 3:
                assert time.monotonic() < give_up, "no token was refused in a minute"
                assert await reader.pull_blob(unique_repo, desc) == data
                reads += 1
                await anyio.sleep(0.2)
            assert await reader.pull_blob(unique_repo, desc) == data
            return reads, reader.target.stats.token

    reads, tokens = run(scenario)
    assert reads >= 3
    readers = [e for e in token_requests_for(instance, unique_repo) if e["user"] == "reader"]
    assert len(readers) == tokens == 3


def test_a_token_server_whose_tokens_are_never_accepted_fails_one_request_quickly(
    registry_factory: Callable[..., RunningRegistry],
) -> None:
    # Re-authentication is bounded per request: the token it got after the first
    # refusal refused too, the request fails, instead of asking forever.
    instance = registry_factory("token", token_real_ttl=-5).instance

    async def scenario() -> int:
        async with Client(instance, instance.credentials("reader")) as reader:
            with pytest.raises(AuthenticationError, match="refused the token its token server"):
                await reader.ping()
            return reader.target.stats.token

    assert run(scenario) == 2
