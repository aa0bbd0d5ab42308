"""Challenge parsing, scope sets and the Authenticator's token cache.

The Authenticator tests talk HTTP to a small real token server (aiohttp.web on
127.0.0.1) defined here; it records every request so the tests can count them.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import aiohttp
import pytest
import structlog
from aiohttp import web
from hypothesis import given
from hypothesis import strategies as st

from replicator.errors import AuthenticationError, DeniedError, ProtocolError
from replicator.targets.registry.auth import Authenticator
from replicator.targets.registry.challenge import (
    Challenge,
    ChallengeRound,
    challenge_error,
    is_insufficient_scope,
    normalize_scopes,
    parse_www_authenticate,
)
from replicator.targets.registry.options import Credentials

T = TypeVar("T")


def run(factory: Callable[[], Awaitable[T]]) -> T:
    async def main() -> T:
        return await factory()

    return asyncio.run(main())


# --------------------------------------------------------------------------- parser


PARSE_TABLE: list[tuple[str, list[Challenge]]] = [
    (
        'Bearer realm="https://auth.example/token",service="registry.example",'
        'scope="repository:a/b:pull,push"',
        [
            Challenge(
                "bearer",
                {
                    "realm": "https://auth.example/token",
                    "service": "registry.example",
                    "scope": "repository:a/b:pull,push",
                },
            )
        ],
    ),
    ('Basic realm="Registry Realm"', [Challenge("basic", {"realm": "Registry Realm"})]),
    ("basic realm=simple", [Challenge("basic", {"realm": "simple"})]),
    ("Basic", [Challenge("basic", {})]),
    (
        'Basic realm="a, b", Bearer realm="https://x/t",error="insufficient_scope"',
        [
            Challenge("basic", {"realm": "a, b"}),
            Challenge("bearer", {"realm": "https://x/t", "error": "insufficient_scope"}),
        ],
    ),
    (
        'Newauth realm="apps", type=1, title="Login to \\"apps\\"", Basic realm="simple"',
        [
            Challenge("newauth", {"realm": "apps", "type": "1", "title": 'Login to "apps"'}),
            Challenge("basic", {"realm": "simple"}),
        ],
    ),
    ("Negotiate abc==, Basic", [Challenge("negotiate", {}, "abc=="), Challenge("basic", {})]),
    (
        'Bearer  REALM = "r" ,, Service=s ,',
        [Challenge("bearer", {"realm": "r", "service": "s"})],
    ),
    ('Bearer realm="unterminated', [Challenge("bearer", {"realm": "unterminated"})]),
    ('Bearer realm="first",realm="second"', [Challenge("bearer", {"realm": "first"})]),
    ("Negotiate abc   ", [Challenge("negotiate", {}, "abc")]),
    ("", []),
    (" , ,", []),
]


@pytest.mark.parametrize(("header", "expected"), PARSE_TABLE)
def test_parse_www_authenticate_table(header: str, expected: list[Challenge]) -> None:
    assert parse_www_authenticate(header) == expected


_token = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJ0123456789-_.", min_size=1)
_value = st.text(
    alphabet=st.characters(blacklist_categories=("Cc", "Cs"), blacklist_characters="\x7f"),
    max_size=30,
)


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


@st.composite
def _challenges(draw: st.DrawFn) -> list[tuple[str, dict[str, str]]]:
    result = []
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        scheme = draw(_token)
        names = draw(st.lists(_token.map(str.lower), max_size=4, unique=True))
        result.append((scheme, {n: draw(_value) for n in names}))
    return result


@given(_challenges(), st.sampled_from([",", ", ", " ,  "]))
def test_parse_round_trips_rendered_challenges(
    challenges: list[tuple[str, dict[str, str]]], sep: str
) -> None:
    header = ", ".join(
        scheme + (" " + sep.join(f"{k}={_quote(v)}" for k, v in params.items()) if params else "")
        for scheme, params in challenges
    )
    parsed = parse_www_authenticate(header)
    assert [(c.scheme, dict(c.params)) for c in parsed] == [
        (scheme.lower(), params) for scheme, params in challenges
    ]


@given(st.text(max_size=80) | st.text(alphabet='aB =,"\\\t', max_size=40))
def test_parse_never_raises(header: str) -> None:
    for challenge in parse_www_authenticate(header):
        assert challenge.scheme == challenge.scheme.lower()


def test_challenge_scopes_and_error_helpers() -> None:
    header = 'Bearer realm="r",scope="repository:a:pull repository:b:pull,push",error="insufficient_scope"'
    (challenge,) = parse_www_authenticate(header)
    assert challenge.scopes == ["repository:a:pull", "repository:b:pull,push"]
    assert is_insufficient_scope(header)
    assert challenge_error('Bearer realm="r",error="invalid_token"') == "invalid_token"
    assert not is_insufficient_scope('Basic realm="x"')


def test_normalize_scopes_merges_actions_per_resource() -> None:
    assert normalize_scopes(
        ["repository:a:push", "repository:a:pull", " repository:b:pull ", "repository:a:pull"]
    ) == frozenset({"repository:a:pull,push", "repository:b:pull"})
    assert normalize_scopes([]) == frozenset()
    assert normalize_scopes(["registry:catalog:*"]) == frozenset({"registry:catalog:*"})


# --------------------------------------------------------------------------- token server


@dataclass
class TokenServer:
    """A tiny token server: records requests, answers per the test's settings."""

    url: str = ""
    requests: list[dict[str, Any]] = field(default_factory=list)
    users: dict[str, str] = field(default_factory=lambda: {"alice": "s3cret-pw"})
    body_key: str = "token"
    expires_in: int | None = None
    oauth: bool = True
    delay: float = 0.0
    counter: int = 0

    async def handle(self, request: web.Request) -> web.Response:
        form = dict(await request.post()) if request.method == "POST" else {}
        self.requests.append(
            {
                "method": request.method,
                "scopes": request.query.getall("scope", []),
                "service": request.query.get("service"),
                "form": {k: str(v) for k, v in form.items()},
                "auth": request.headers.get("Authorization"),
            }
        )
        if self.delay:
            await asyncio.sleep(self.delay)
        if request.method == "POST":
            if not self.oauth:
                return web.Response(status=404)
            if form.get("refresh_token") != "id-token-xyz":
                return web.Response(status=401)
        else:
            auth = request.headers.get("Authorization")
            if auth is not None:
                user, _, password = base64.b64decode(auth.split(" ", 1)[1]).decode().partition(":")
                if self.users.get(user) != password:
                    return web.Response(status=401)
        self.counter += 1
        body: dict[str, Any] = {self.body_key: f"tok-{self.counter}"}
        if self.expires_in is not None:
            body["expires_in"] = self.expires_in
        return web.Response(text=json.dumps(body), content_type="application/json")


@asynccontextmanager
async def token_server(server: TokenServer) -> AsyncIterator[aiohttp.ClientSession]:
    app = web.Application()
    app.router.add_route("*", "/token", server.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    server.url = f"http://127.0.0.1:{port}/token"
    try:
        async with aiohttp.ClientSession() as session:
            yield session
    finally:
        await runner.cleanup()


def bearer(server: TokenServer, scope: str = "", error: str = "") -> str:
    header = f'Bearer realm="{server.url}",service="test-registry"'
    if scope:
        header += f',scope="{scope}"'
    if error:
        header += f',error="{error}"'
    return header


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


ALICE = Credentials(username="alice", password="s3cret-pw")


def test_bearer_token_requested_for_all_scopes_and_cached() -> None:
    server = TokenServer()
    scopes = ["repository:src:pull", "repository:dst:pull,push"]

    async def scenario() -> None:
        async with token_server(server) as session:
            auth = Authenticator("reg.test", ALICE)
            assert await auth.authorize(session, scopes) == {}
            headers = await auth.on_challenge(
                session, bearer(server, "repository:dst:pull,push"), scopes
            )
            assert headers == {"Authorization": "Bearer tok-1"}
            assert await auth.authorize(session, list(reversed(scopes))) == headers
            assert auth.token_requests == 1

    run(scenario)
    (request,) = server.requests
    assert request["method"] == "GET"
    assert sorted(request["scopes"]) == ["repository:dst:pull,push", "repository:src:pull"]
    assert request["service"] == "test-registry"
    assert request["auth"] == "Basic " + base64.b64encode(b"alice:s3cret-pw").decode()


def test_challenge_scopes_are_merged_into_the_token_request() -> None:
    server = TokenServer()

    async def scenario() -> None:
        async with token_server(server) as session:
            auth = Authenticator("reg.test", None)
            await auth.on_challenge(
                session, bearer(server, "repository:x:pull"), ["repository:y:pull"]
            )

    run(scenario)
    assert sorted(server.requests[0]["scopes"]) == ["repository:x:pull", "repository:y:pull"]
    assert server.requests[0]["auth"] is None


def test_known_realm_fetches_tokens_for_new_scopes_without_a_401() -> None:
    server = TokenServer()

    async def scenario() -> None:
        async with token_server(server) as session:
            auth = Authenticator("reg.test", ALICE)
            await auth.on_challenge(session, bearer(server), [])
            headers = await auth.authorize(session, ["repository:new:pull"])
            assert headers == {"Authorization": "Bearer tok-2"}

    run(scenario)
    assert [r["scopes"] for r in server.requests] == [[], ["repository:new:pull"]]


def test_token_cache_expires_and_refreshes_early() -> None:
    server = TokenServer()
    clock = Clock()
    scopes = ["repository:a:pull"]

    async def scenario() -> None:
        async with token_server(server) as session:
            auth = Authenticator("reg.test", ALICE, clock=clock)
            await auth.on_challenge(session, bearer(server), scopes)
            # No expires_in: 60 s, replaced 6 s early.
            clock.now += 53
            assert await auth.authorize(session, scopes) == {"Authorization": "Bearer tok-1"}
            clock.now += 1.5
            assert await auth.authorize(session, scopes) == {"Authorization": "Bearer tok-2"}
            server.expires_in = 300
            clock.now += 60
            assert await auth.authorize(session, scopes) == {"Authorization": "Bearer tok-3"}
            clock.now += 289
            assert await auth.authorize(session, scopes) == {"Authorization": "Bearer tok-3"}
            clock.now += 2
            assert await auth.authorize(session, scopes) == {"Authorization": "Bearer tok-4"}

    run(scenario)
    assert len(server.requests) == 4


def test_concurrent_requests_share_one_token_request() -> None:
    server = TokenServer(delay=0.2)
    scopes = ["repository:a:pull"]

    async def scenario() -> list[dict[str, str]]:
        async with token_server(server) as session:
            auth = Authenticator("reg.test", ALICE)
            challenge = bearer(server, "repository:a:pull")
            first = [auth.on_challenge(session, challenge, scopes) for _ in range(5)]
            return list(await asyncio.gather(*first))

    results = run(scenario)
    assert results == [{"Authorization": "Bearer tok-1"}] * 5
    assert len(server.requests) == 1


def test_access_token_field_is_accepted() -> None:
    server = TokenServer(body_key="access_token")

    async def scenario() -> dict[str, str]:
        async with token_server(server) as session:
            return await Authenticator("reg.test", ALICE).on_challenge(session, bearer(server), [])

    assert run(scenario) == {"Authorization": "Bearer tok-1"}


def test_response_without_token_is_a_protocol_error() -> None:
    server = TokenServer(body_key="nothing")

    async def scenario() -> None:
        async with token_server(server) as session:
            await Authenticator("reg.test", ALICE).on_challenge(session, bearer(server), [])

    with pytest.raises(ProtocolError, match="sent no token"):
        run(scenario)


def test_wrong_password_is_an_authentication_error_without_the_password() -> None:
    server = TokenServer()
    wrong = Credentials(username="alice", password="not-the-pw-4711")

    async def scenario() -> None:
        async with token_server(server) as session:
            auth = Authenticator("reg.test", wrong)
            await auth.on_challenge(session, bearer(server), ["repository:a:pull"])

    with pytest.raises(AuthenticationError) as info:
        run(scenario)
    text = str(info.value)
    assert "reg.test: authentication failed (wrong user name or password?)" in text
    assert "not-the-pw-4711" not in text
    assert "not-the-pw-4711" not in repr(info.value)


def test_refused_token_is_refetched_once_then_an_error() -> None:
    server = TokenServer()
    scopes = ["repository:a:pull"]

    async def scenario() -> None:
        async with token_server(server) as session:
            auth = Authenticator("reg.test", ALICE)
            challenge = bearer(server, error="invalid_token")
            first = await auth.on_challenge(session, challenge, scopes)
            second = await auth.on_challenge(
                session, challenge, scopes, sent_authorization=first["Authorization"]
            )
            assert second == {"Authorization": "Bearer tok-2"}
            # A stale header (not the current token) just gets the current one.
            assert (
                await auth.on_challenge(
                    session, challenge, scopes, sent_authorization=first["Authorization"]
                )
                == second
            )
            await auth.on_challenge(
                session, challenge, scopes, sent_authorization=second["Authorization"]
            )

    with pytest.raises(AuthenticationError, match="refused the token"):
        run(scenario)
    assert len(server.requests) == 2


def test_a_renewed_token_once_accepted_is_renewed_again_when_refused_later() -> None:
    # Tokens that die before they say (clock skew, revocation): each refusal in a
    # run gets a fresh token, as long as the one before had been accepted.
    server = TokenServer()
    scopes = ["repository:a:pull"]

    async def scenario() -> list[str]:
        async with token_server(server) as session:
            auth = Authenticator("reg.test", ALICE)
            refused = bearer(server, error="invalid_token")
            seen = [(await auth.on_challenge(session, bearer(server), scopes))["Authorization"]]
            for _ in range(3):
                fresh = await auth.on_challenge(
                    session,
                    refused,
                    scopes,
                    sent_authorization=seen[-1],
                    challenge_round=ChallengeRound(),
                )
                auth.accepted(fresh["Authorization"])  # a later request went through
                seen.append(fresh["Authorization"])
            return seen

    assert run(scenario) == [f"Bearer tok-{i}" for i in (1, 2, 3, 4)]
    assert len(server.requests) == 4


def test_a_renewed_token_refused_within_the_same_request_is_an_error() -> None:
    server = TokenServer()
    scopes = ["repository:a:pull"]

    async def scenario() -> None:
        async with token_server(server) as session:
            auth = Authenticator("reg.test", ALICE)
            challenge = bearer(server, error="invalid_token")
            first = await auth.on_challenge(session, bearer(server), scopes)
            auth.accepted(first["Authorization"])
            request = ChallengeRound()
            fresh = await auth.on_challenge(
                session,
                challenge,
                scopes,
                sent_authorization=first["Authorization"],
                challenge_round=request,
            )
            assert request.renewed
            # Proven good by another request meanwhile, still refused again
            # within this one: no third token for the same request.
            auth.accepted(fresh["Authorization"])
            await auth.on_challenge(
                session,
                challenge,
                scopes,
                sent_authorization=fresh["Authorization"],
                challenge_round=request,
            )

    with pytest.raises(AuthenticationError, match="refused the token its token server issued"):
        run(scenario)
    assert len(server.requests) == 2


def test_insufficient_scope_with_credentials_is_denied() -> None:
    server = TokenServer()
    scopes = ["repository:a:pull,push"]

    async def scenario() -> None:
        async with token_server(server) as session:
            auth = Authenticator("reg.test", ALICE)
            sent = await auth.on_challenge(session, bearer(server), scopes)
            await auth.on_challenge(
                session,
                bearer(server, "repository:a:pull,push", "insufficient_scope"),
                scopes,
                sent_authorization=sent["Authorization"],
            )

    with pytest.raises(DeniedError, match="denied"):
        run(scenario)


def test_insufficient_scope_when_anonymous_asks_to_log_in() -> None:
    server = TokenServer()
    scopes = ["repository:a:pull"]

    async def scenario() -> None:
        async with token_server(server) as session:
            auth = Authenticator("reg.test", None)
            sent = await auth.on_challenge(session, bearer(server), scopes)
            await auth.on_challenge(
                session,
                bearer(server, error="insufficient_scope"),
                scopes,
                sent_authorization=sent["Authorization"],
            )

    with pytest.raises(AuthenticationError, match="authentication required"):
        run(scenario)


def test_identity_token_uses_oauth2_refresh_grant() -> None:
    server = TokenServer(body_key="access_token", expires_in=120)
    creds = Credentials(identity_token="id-token-xyz")

    async def scenario() -> dict[str, str]:
        async with token_server(server) as session:
            auth = Authenticator("reg.test", creds)
            return await auth.on_challenge(
                session, bearer(server), ["repository:a:pull", "repository:b:push"]
            )

    assert run(scenario) == {"Authorization": "Bearer tok-1"}
    (request,) = server.requests
    assert request["method"] == "POST"
    assert request["form"] == {
        "client_id": "replicator",
        "service": "test-registry",
        "scope": "repository:a:pull repository:b:push",
        "grant_type": "refresh_token",
        "refresh_token": "id-token-xyz",
    }


def test_oauth2_post_falls_back_to_get_on_404() -> None:
    server = TokenServer(oauth=False)
    creds = Credentials(username="alice", password="s3cret-pw", identity_token="id-token-xyz")

    async def scenario() -> None:
        async with token_server(server) as session:
            auth = Authenticator("reg.test", creds)
            assert await auth.on_challenge(session, bearer(server), ["repository:a:pull"]) == {
                "Authorization": "Bearer tok-1"
            }
            await auth.authorize(session, ["repository:b:pull"])

    run(scenario)
    # The fallback is remembered: the second token goes straight to GET.
    assert [r["method"] for r in server.requests] == ["POST", "GET", "GET"]


def test_password_grant_when_asked_for() -> None:
    server = TokenServer()

    async def handle_password(request: web.Request) -> web.Response:
        form = await request.post()
        server.requests.append({"form": dict(form)})
        ok = form.get("username") == "alice" and form.get("password") == "s3cret-pw"
        if not ok:
            return web.Response(status=401)
        return web.json_response({"access_token": "pw-tok", "refresh_token": "r1"})

    server.handle = handle_password  # type: ignore[method-assign]

    async def scenario() -> dict[str, str]:
        async with token_server(server) as session:
            auth = Authenticator("reg.test", ALICE, use_password_grant=True)
            return await auth.on_challenge(session, bearer(server), [])

    assert run(scenario) == {"Authorization": "Bearer pw-tok"}
    assert server.requests[0]["form"]["grant_type"] == "password"


def test_basic_challenge_then_basic_on_every_request() -> None:
    async def scenario() -> None:
        async with aiohttp.ClientSession() as session:
            auth = Authenticator("reg.test", ALICE)
            assert await auth.authorize(session, ["repository:a:pull"]) == {}
            headers = await auth.on_challenge(session, 'Basic realm="Registry"', [])
            expected = "Basic " + base64.b64encode(b"alice:s3cret-pw").decode()
            assert headers == {"Authorization": expected}
            assert await auth.authorize(session, ["repository:b:push"]) == headers
            assert auth.scheme == "basic"
            with pytest.raises(AuthenticationError, match="wrong user name or password") as info:
                await auth.on_challenge(
                    session, 'Basic realm="Registry"', [], sent_authorization=expected
                )
            assert "s3cret-pw" not in str(info.value)

    run(scenario)


def test_basic_challenge_without_credentials_says_log_in() -> None:
    async def scenario() -> None:
        async with aiohttp.ClientSession() as session:
            await Authenticator("reg.test", None).on_challenge(session, 'Basic realm="R"', [])

    with pytest.raises(AuthenticationError, match=r"replicator login reg\.test"):
        run(scenario)


def test_preset_registry_token_is_sent_as_is() -> None:
    creds = Credentials(registry_token="preset-tok")

    async def scenario() -> None:
        async with aiohttp.ClientSession() as session:
            auth = Authenticator("reg.test", creds)
            assert await auth.authorize(session, ["repository:a:pull"]) == {
                "Authorization": "Bearer preset-tok"
            }
            with pytest.raises(AuthenticationError):
                await auth.on_challenge(
                    session,
                    'Bearer realm="http://127.0.0.1:1/t"',
                    [],
                    sent_authorization="Bearer preset-tok",
                )

    run(scenario)


def test_unsupported_scheme_and_bad_realm() -> None:
    async def scenario(header: str) -> None:
        async with aiohttp.ClientSession() as session:
            await Authenticator("reg.test", ALICE).on_challenge(session, header, [])

    with pytest.raises(AuthenticationError, match="unsupported authentication scheme"):
        run(lambda: scenario("Negotiate abc"))
    with pytest.raises(ProtocolError, match="realm"):
        run(lambda: scenario('Bearer realm="file:///etc/passwd"'))


def test_repr_and_secrets_registered() -> None:
    from replicator.observe.logging import redact_text

    creds = Credentials(username="alice", password="pw-abcdef-123", identity_token="idt-98765")
    auth = Authenticator("reg.test", creds)
    assert "pw-abcdef-123" not in repr(auth)
    assert "pw-abcdef-123" not in redact_text("password is pw-abcdef-123")
    assert "idt-98765" not in redact_text("token idt-98765 here")


@pytest.fixture
def debug_log() -> Iterator[io.StringIO]:
    """Process logging at DEBUG into a buffer (JSON lines); restored afterwards."""
    from replicator.observe.logging import configure_logging

    buffer = io.StringIO()
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    configure_logging(debug=True, fmt="json", stream=buffer)
    try:
        yield buffer
    finally:
        structlog.reset_defaults()
        for handler in list(root.handlers):
            if handler not in handlers:
                root.removeHandler(handler)
        root.setLevel(level)


def test_debug_logs_name_the_flow_but_hold_no_secret(debug_log: io.StringIO) -> None:
    server = TokenServer()
    wrong = Credentials(username="alice", password="Wrong-pw-in-log-test")

    async def scenario() -> None:
        async with token_server(server) as session:
            good = Authenticator("reg.test", ALICE)
            await good.on_challenge(session, bearer(server), ["repository:a:pull"])
            with pytest.raises(AuthenticationError):
                await Authenticator("reg.test", wrong).on_challenge(session, bearer(server), [])

    run(scenario)
    text = debug_log.getvalue()
    events = [json.loads(line)["event"] for line in text.splitlines()]
    assert "auth.token_request" in events
    assert "auth.token_issued" in events
    for secret in (
        "s3cret-pw",
        "Wrong-pw-in-log-test",
        "tok-1",
        base64.b64encode(b"alice:s3cret-pw").decode(),
    ):
        assert str(secret) not in text
    # Nothing even needed masking: the events never carry a secret.
    assert "***" not in text
