"""Authentication against real registries: token auth (with a real token server) and Basic.

Requests go through the registry transport with a real :class:`Authenticator`,
exactly as the registry client sends them; the token server's ``/_log`` shows
which scopes each token request asked for.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest

from replicator.errors import AuthenticationError, DeniedError
from replicator.oci.digest import digest_bytes
from replicator.targets.registry.auth import Authenticator
from replicator.targets.registry.options import Credentials, RegistryOptions, RetryPolicy
from replicator.targets.registry.transport import RequestSpec, Transport
from tests.infra.registry import RegistryInstance

T = TypeVar("T")


def run(factory: Callable[[], Awaitable[T]]) -> T:
    async def main() -> T:
        return await factory()

    return asyncio.run(main())


class Client:
    """The few registry calls these tests need, over the real transport."""

    def __init__(self, instance: RegistryInstance, credentials: Credentials | None) -> None:
        options = RegistryOptions(
            credentials=credentials, plain_http=True, retry=RetryPolicy(attempts=2)
        )
        self.auth = Authenticator(instance.host, credentials)
        self.transport = Transport(instance.host, options, self.auth)

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.transport.aclose()

    def _spec(self, method: str, path: str, **kwargs: Any) -> RequestSpec:
        query = kwargs.pop("query", None)
        return RequestSpec(
            method=method,
            url=self.transport.url(path, query),
            what=kwargs.pop("what", path),
            **kwargs,
        )

    async def ping(self) -> None:
        await self.transport.request(
            self._spec("GET", "/v2/", kind="ping", scopes=(), repository=None, ok={200})
        )

    async def push_blob(self, repo: str, data: bytes) -> str:
        digest = digest_bytes(data)
        scopes = (f"repository:{repo}:pull,push",)
        start = await self.transport.request(
            self._spec(
                "POST",
                f"/v2/{repo}/blobs/uploads/",
                kind="blob_upload_start",
                scopes=scopes,
                repository=repo,
                ok={202},
            )
        )
        location = self.transport.resolve(start.url, start.headers["Location"])
        url = location.update_query({"digest": digest})
        await self.transport.request(
            RequestSpec(
                method="PUT",
                url=url,
                kind="blob_put",
                scopes=scopes,
                repository=repo,
                what="blob",
                ok={201},
                data=data,
                headers={"Content-Type": "application/octet-stream"},
            )
        )
        return digest

    async def pull_blob(self, repo: str, digest: str) -> bytes:
        reply = await self.transport.request(
            self._spec(
                "GET",
                f"/v2/{repo}/blobs/{digest}",
                kind="blob_get",
                scopes=(f"repository:{repo}:pull",),
                repository=repo,
                ok={200},
                follow_redirects=True,
            ),
            max_body=1024 * 1024,
        )
        return reply.body

    async def mount(self, repo: str, source: str, digest: str) -> int:
        reply = await self.transport.request(
            self._spec(
                "POST",
                f"/v2/{repo}/blobs/uploads/",
                query={"mount": digest, "from": source},
                kind="blob_mount",
                scopes=(f"repository:{source}:pull", f"repository:{repo}:pull,push"),
                repository=repo,
                ok={201, 202},
            )
        )
        return reply.status


def token_requests_for(instance: RegistryInstance, *repos: str) -> list[dict[str, Any]]:
    """Token-server log entries whose scopes mention any of ``repos``."""
    return [
        e
        for e in instance.token_log()
        if any(f":{repo}:" in scope for scope in e["scopes"] for repo in repos)
    ]


def test_reader_pulls_what_admin_pushed(registry_token: RegistryInstance, unique_repo: str) -> None:
    data = b"pulled by a reader"

    async def scenario() -> bytes:
        async with Client(registry_token, registry_token.credentials("admin")) as admin:
            digest = await admin.push_blob(unique_repo, data)
        async with Client(registry_token, registry_token.credentials("reader")) as reader:
            first = await reader.pull_blob(unique_repo, digest)
            assert await reader.pull_blob(unique_repo, digest) == first
            # One token for the pull scope, reused for the second request.
            assert reader.transport.stats.token == 1
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
            digest = await admin.push_blob(source, data)
        limited = registry_token.credentials("limited")
        async with Client(registry_token, limited) as client:
            assert await client.mount(target, source, digest) == 201
            assert await client.pull_blob(target, digest) == data

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
            digest = await client.push_blob(unique_repo, data)
            assert client.auth.scheme == "basic"
            return await client.pull_blob(unique_repo, digest)

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
