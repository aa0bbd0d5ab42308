"""Each layer of the registry transport on its own.

The bottom layer (one request) talks to a tiny in-process aiohttp server; every
other layer is driven by a scripted fake of the layer below it, so what it does
with each answer or failure is observed exactly: what it sent, how often, with
which headers, and what it handed up.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import aiohttp
import anyio
import pytest
from aiohttp import web
from aiohttp.client_reqrep import ConnectionKey
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from replicator.errors import (
    ConnectionFailedError,
    IntegrityError,
    NotFoundError,
    ProtocolError,
    ServerError,
)
from replicator.targets.base import RequestStats
from replicator.targets.registry.auth_layer import MAX_CHALLENGES, AuthLayer
from replicator.targets.registry.challenge import ChallengeRound
from replicator.targets.registry.errors import DeadlineExceeded
from replicator.targets.registry.exchange import (
    BodySourceFailed,
    HostState,
    NoAnswer,
    Outgoing,
    RequestSpec,
)
from replicator.targets.registry.options import RegistryOptions, RetryPolicy
from replicator.targets.registry.redirects import MAX_REDIRECTS, RedirectLayer
from replicator.targets.registry.retries import RetryLayer
from replicator.targets.registry.send import SingleRequest
from replicator.targets.registry.transport import ErrorMapping

T = TypeVar("T")
ORIGIN = URL("http://reg.test")
HOST = "reg.test"


def run(factory: Callable[[], Awaitable[T]]) -> T:
    async def main() -> T:
        return await factory()

    return asyncio.run(main())


def through(layer: Any, request: Outgoing) -> Any:
    """Send ``request`` through ``layer`` on a fresh event loop; what it hands up."""
    return asyncio.run(layer.send(request))


def spec(
    method: str = "GET", url: URL = ORIGIN / "v2/app/manifests/v1", **extra: Any
) -> RequestSpec:
    fields: dict[str, Any] = {
        "kind": "manifest_get",
        "scopes": ["repository:app:pull"],
        "repository": "app",
        "what": 'manifest "v1"',
        "ok": (200,),
    }
    fields.update(extra)
    return RequestSpec(method=method, url=url, **fields)


class FakeContent:
    def __init__(self, body: bytes) -> None:
        self._body = body

    async def read(self, n: int = -1) -> bytes:
        out, self._body = (self._body, b"") if n < 0 else (self._body[:n], self._body[n:])
        return out


class FakeResponse:
    """What the layers use of an aiohttp response."""

    def __init__(
        self,
        status: int,
        headers: dict[str, str] | None = None,
        url: URL = ORIGIN / "v2/app/manifests/v1",
        body: bytes = b"",
    ) -> None:
        self.status = status
        self.headers = CIMultiDictProxy(CIMultiDict(headers or {}))
        self.url = url
        self.content = FakeContent(body)
        self.content_length = len(body)
        self.released = False

    def release(self) -> None:
        self.released = True


Step = FakeResponse | BaseException | Callable[[Outgoing], Awaitable[FakeResponse]]


class Script:
    """A fake next layer: answers each send with the next step (the last one repeats)."""

    def __init__(self, *steps: Step) -> None:
        self.steps = list(steps)
        self.sent: list[Outgoing] = []

    async def send(self, request: Outgoing) -> Any:
        self.sent.append(request)
        step = self.steps.pop(0) if len(self.steps) > 1 else self.steps[0]
        if isinstance(step, BaseException):
            raise step
        if isinstance(step, FakeResponse):
            return step
        return await step(request)


def refused() -> NoAnswer:
    key = ConnectionKey("reg.test", 80, False, True, None, None, None)
    return NoAnswer(aiohttp.ClientConnectorError(key, ConnectionRefusedError(111, "refused")))


def tls_failure() -> NoAnswer:
    key = ConnectionKey("reg.test", 443, True, True, None, None, None)
    inner = ssl.SSLCertVerificationError(1, "certificate verify failed")
    return NoAnswer(aiohttp.ClientConnectorCertificateError(key, inner))


FAST = RetryPolicy(attempts=4, base_delay=0.01, max_delay=0.05, max_reconnect_delay=0.05)


def retry_layer(
    inner: Script, *, deadline: float = 60.0, answered: bool = True, policy: RetryPolicy = FAST
) -> RetryLayer:
    options = RegistryOptions(retry=policy, retry_deadline=deadline)
    return RetryLayer(inner, options, HostState(answered=answered), host_name=HOST)


# -- one request (against a real in-process server) ----------------------------------------


@asynccontextmanager
async def echo_server(seen: list[bytes]) -> AsyncIterator[URL]:
    async def handle(request: web.Request) -> web.Response:
        seen.append(await request.read())
        return web.Response(status=201)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield URL(f"http://127.0.0.1:{port}")
    finally:
        await runner.cleanup()


def test_one_request_counts_each_send_its_retries_and_body_bytes() -> None:
    seen: list[bytes] = []

    async def scenario() -> tuple[RequestStats, HostState]:
        stats, host = RequestStats(), HostState()
        async with echo_server(seen) as base, aiohttp.ClientSession() as session:
            layer = SingleRequest(lambda: session, stats, host)
            put = spec("PUT", base / "v2/app/manifests/v1", kind="manifest_put", data=b"abc")
            (await layer.send(Outgoing.first(put))).release()
            (await layer.send(Outgoing.first(put).again(2))).release()

            async def stream() -> AsyncIterator[bytes]:
                yield b"12345"
                yield b"678"

            patch = spec("PATCH", base / "v2/app/blobs/uploads/u", kind="blob_patch", body=stream)
            (await layer.send(Outgoing.first(patch))).release()
        return stats, host

    stats, host = run(scenario)
    assert (stats.manifest_put, stats.blob_patch, stats.retries) == (2, 1, 1)
    assert stats.bytes_sent == 3 + 3 + 8
    assert seen == [b"abc", b"abc", b"12345678"]
    assert host.answered


def test_one_request_tells_a_failing_body_source_from_a_network_failure() -> None:
    async def scenario() -> BaseException:
        async with echo_server([]) as base, aiohttp.ClientSession() as session:
            layer = SingleRequest(lambda: session, RequestStats(), HostState())

            async def broken() -> AsyncIterator[bytes]:
                yield b"x" * 100_000
                raise IntegrityError("the source does not match its digest")

            patch = spec("PATCH", base / "v2/app/blobs/uploads/u", kind="blob_patch", body=broken)
            with pytest.raises(BodySourceFailed) as info:
                await layer.send(Outgoing.first(patch))
            return info.value.cause

    assert isinstance(run(scenario), IntegrityError)


def test_one_request_without_an_answer_raises_no_answer() -> None:
    async def scenario() -> tuple[BaseException, HostState]:
        host = HostState()
        async with aiohttp.ClientSession() as session:
            layer = SingleRequest(lambda: session, RequestStats(), host)
            with pytest.raises(NoAnswer) as info:
                await layer.send(Outgoing.first(spec(url=URL("http://127.0.0.1:9/v2/"))))
        return info.value.cause, host

    cause, host = run(scenario)
    assert isinstance(cause, aiohttp.ClientConnectorError)
    assert not host.answered


# -- retries --------------------------------------------------------------------------------


def test_retryable_answers_are_sent_again_up_to_the_attempts() -> None:
    busy = [FakeResponse(503) for _ in range(5)]
    inner = Script(*busy)
    out = Outgoing.first(spec())
    response = run(lambda: retry_layer(inner).send(out))
    assert response is busy[3]  # the fourth answer is handed up as it is
    assert [r.attempt for r in inner.sent] == [1, 2, 3, 4]
    assert all(r.released for r in busy[:3]) and not busy[3].released
    assert out.trace.attempts == 4


def test_a_success_after_a_retry_ends_the_retries() -> None:
    inner = Script(FakeResponse(502), FakeResponse(200))
    assert run(lambda: retry_layer(inner).send(Outgoing.first(spec()))).status == 200
    assert len(inner.sent) == 2


def test_retry_after_is_honoured_and_bounded() -> None:
    inner = Script(FakeResponse(429, {"Retry-After": "0.3"}), FakeResponse(200))
    started = time.monotonic()
    run(lambda: retry_layer(inner).send(Outgoing.first(spec())))
    assert time.monotonic() - started >= 0.3
    # Longer than max_retry_after, or than the deadline allows: handed up at once.
    for wait, deadline in (("700", 60.0), ("2", 0.5)):
        inner = Script(FakeResponse(429, {"Retry-After": wait}), FakeResponse(200))
        response = through(retry_layer(inner, deadline=deadline), Outgoing.first(spec()))
        assert response.status == 429 and len(inner.sent) == 1


def test_500_is_retried_for_reads_and_where_the_request_allows_it() -> None:
    for request, sends in (
        (spec(), 2),
        (spec("POST", kind="blob_upload_start"), 1),
        (spec("PUT", kind="manifest_put", retry_500=True), 2),
    ):
        inner = Script(FakeResponse(500), FakeResponse(200))
        through(retry_layer(inner), Outgoing.first(request))
        assert len(inner.sent) == sends, request.method


def test_refused_connections_to_a_host_that_answered_are_retried_until_the_deadline() -> None:
    inner = Script(refused())
    out = Outgoing.first(spec())
    started = time.monotonic()
    with pytest.raises(NoAnswer):
        run(lambda: retry_layer(inner, deadline=0.6).send(out))
    elapsed = time.monotonic() - started
    assert 0.45 <= elapsed < 1.0
    assert len(inner.sent) > FAST.attempts  # bounded by time, not by count
    assert out.trace.attempts == len(inner.sent)
    assert 0.45 <= out.trace.elapsed < 1.0


def test_a_host_that_never_answered_and_refuses_fails_after_a_few_quick_tries() -> None:
    inner = Script(refused())
    with pytest.raises(NoAnswer):
        run(lambda: retry_layer(inner, answered=False).send(Outgoing.first(spec())))
    assert len(inner.sent) == 3


def test_tls_failures_answers_that_are_not_http_and_one_shot_requests_are_not_retried() -> None:
    request_info = aiohttp.RequestInfo(ORIGIN, "GET", CIMultiDictProxy(CIMultiDict()))
    not_http = NoAnswer(aiohttp.ClientResponseError(request_info, (), message="bad status"))
    for failure, request in (
        (tls_failure(), spec()),
        (not_http, spec()),
        (refused(), spec("PUT", kind="blob_put", retry=False)),
    ):
        inner = Script(failure)
        with pytest.raises(NoAnswer):
            through(retry_layer(inner), Outgoing.first(request))
        assert len(inner.sent) == 1


def test_an_attempt_still_waiting_at_the_deadline_is_abandoned() -> None:
    async def hang(request: Outgoing) -> FakeResponse:
        await anyio.sleep_forever()
        raise AssertionError

    inner = Script(NoAnswer(TimeoutError()), hang)
    started = time.monotonic()
    with pytest.raises(NoAnswer) as info:
        run(lambda: retry_layer(inner, deadline=0.5).send(Outgoing.first(spec())))
    assert isinstance(info.value.cause, DeadlineExceeded)
    assert 0.45 <= time.monotonic() - started < 1.0


# -- redirects ------------------------------------------------------------------------------


def redirect_to(location: str, url: URL = ORIGIN / "v2/app/blobs/sha256:x") -> FakeResponse:
    return FakeResponse(307, {"Location": location}, url=url)


def blob_request() -> Outgoing:
    request = Outgoing.first(spec(url=ORIGIN / "v2/app/blobs/sha256:x", follow_redirects=True))
    return request.with_headers(CIMultiDict({"Authorization": "Bearer registry-only"}))


def test_a_redirect_to_another_origin_goes_without_the_registry_authorization() -> None:
    final = FakeResponse(200, url=URL("http://storage.test/b"))
    first = redirect_to("http://storage.test/b?sig=1")
    inner = Script(first, final)
    response = run(lambda: RedirectLayer(inner, ORIGIN, host_name=HOST).send(blob_request()))
    assert response is final and first.released
    assert [str(r.url) for r in inner.sent] == [
        "http://reg.test/v2/app/blobs/sha256:x",
        "http://storage.test/b?sig=1",
    ]
    assert "Authorization" in inner.sent[0].headers
    assert "Authorization" not in inner.sent[1].headers


def test_a_redirect_back_to_the_registry_carries_its_authorization_again() -> None:
    inner = Script(
        redirect_to("http://storage.test/a"),
        redirect_to("/v2/app/blobs/sha256:y", url=URL("http://storage.test/a")),
        FakeResponse(200),
    )
    run(lambda: RedirectLayer(inner, ORIGIN, host_name=HOST).send(blob_request()))
    assert str(inner.sent[2].url) == "http://storage.test/v2/app/blobs/sha256:y"
    assert "Authorization" not in inner.sent[2].headers  # relative to the foreign hop
    inner = Script(
        redirect_to("http://storage.test/a"), redirect_to("http://reg.test/v2/z"), FakeResponse(200)
    )
    run(lambda: RedirectLayer(inner, ORIGIN, host_name=HOST).send(blob_request()))
    assert inner.sent[2].headers["Authorization"] == "Bearer registry-only"


def test_redirects_are_bounded_and_followed_only_when_asked() -> None:
    inner = Script(redirect_to("/v2/app/blobs/sha256:x"))
    with pytest.raises(ProtocolError, match="too many redirects"):
        run(lambda: RedirectLayer(inner, ORIGIN, host_name=HOST).send(blob_request()))
    assert len(inner.sent) == MAX_REDIRECTS + 1
    inner = Script(redirect_to("http://storage.test/b"))
    plain = Outgoing.first(spec())
    assert run(lambda: RedirectLayer(inner, ORIGIN, host_name=HOST).send(plain)).status == 307


# -- authentication -------------------------------------------------------------------------


class FakeProvider:
    """An authenticator that hands out numbered tokens and records what it is told."""

    def __init__(self) -> None:
        self.token_requests = 0
        self.rounds: list[ChallengeRound | None] = []
        self.sent: list[str | None] = []
        self.accepted_headers: list[str] = []

    async def authorize(self, session: Any, scopes: Sequence[str]) -> dict[str, str]:
        return {"Authorization": "Bearer t0"}

    async def on_challenge(
        self,
        session: Any,
        www_authenticate: str,
        scopes: Sequence[str],
        *,
        sent_authorization: str | None = None,
        challenge_round: ChallengeRound | None = None,
    ) -> dict[str, str]:
        self.token_requests += 1
        self.rounds.append(challenge_round)
        self.sent.append(sent_authorization)
        return {"Authorization": f"Bearer t{self.token_requests}"}

    def accepted(self, authorization: str) -> None:
        self.accepted_headers.append(authorization)


def auth_layer(inner: Script, provider: FakeProvider, stats: RequestStats) -> AuthLayer:
    return AuthLayer(inner, provider, lambda: None, ORIGIN, stats)


CHALLENGE = {"WWW-Authenticate": 'Bearer realm="http://auth.test/token",service="reg"'}


def test_a_challenge_is_answered_and_the_request_sent_again() -> None:
    provider, stats = FakeProvider(), RequestStats()
    inner = Script(FakeResponse(401, CHALLENGE), FakeResponse(200))
    response = run(lambda: auth_layer(inner, provider, stats).send(Outgoing.first(spec()).again(2)))
    assert response.status == 200
    assert [r.headers["Authorization"] for r in inner.sent] == ["Bearer t0", "Bearer t1"]
    assert [r.attempt for r in inner.sent] == [2, 1]  # an answered challenge is no retry
    assert provider.sent == ["Bearer t0"]
    assert provider.accepted_headers == ["Bearer t1"]
    assert stats.token == 1


def test_challenges_are_bounded_per_request_and_share_one_round() -> None:
    provider, stats = FakeProvider(), RequestStats()
    inner = Script(FakeResponse(401, CHALLENGE))
    response = run(lambda: auth_layer(inner, provider, stats).send(Outgoing.first(spec())))
    assert response.status == 401  # handed up for the error mapping to explain
    assert len(inner.sent) == 1 + MAX_CHALLENGES
    assert len({id(r) for r in provider.rounds}) == 1 and provider.rounds[0] is not None
    assert provider.accepted_headers == []


def test_credentials_stay_off_other_origins_and_unanswerable_401s_go_up() -> None:
    provider, stats = FakeProvider(), RequestStats()
    inner = Script(FakeResponse(200))
    foreign = Outgoing.first(spec(url=URL("http://storage.test/b")))
    run(lambda: auth_layer(inner, provider, stats).send(foreign))
    assert "Authorization" not in inner.sent[0].headers
    inner = Script(FakeResponse(401))  # no challenge to answer
    assert (
        run(lambda: auth_layer(inner, provider, stats).send(Outgoing.first(spec()))).status == 401
    )
    assert provider.token_requests == 0


# -- error mapping --------------------------------------------------------------------------


def mapped(step: Step, request: Outgoing | None = None) -> Any:
    return run(lambda: ErrorMapping(Script(step), HOST).send(request or Outgoing.first(spec())))


def test_successes_pass_and_refusals_become_the_right_error() -> None:
    ok = FakeResponse(200)
    assert mapped(ok) is ok and not ok.released
    missing = FakeResponse(404, body=b'{"errors":[{"code":"MANIFEST_UNKNOWN"}]}')
    with pytest.raises(NotFoundError, match=r'manifest "v1" not found \(MANIFEST_UNKNOWN\)'):
        mapped(missing)
    assert missing.released
    busy = Outgoing.first(spec())
    busy.trace.attempts = 3
    with pytest.raises(ServerError, match="after 3 attempts"):
        mapped(FakeResponse(503), busy)


def test_no_answer_and_failing_sources_become_the_right_error() -> None:
    request = Outgoing.first(spec())
    request.trace.attempts, request.trace.elapsed = 4, 2.5
    with pytest.raises(ConnectionFailedError) as info:
        mapped(refused(), request)
    assert str(info.value) == "cannot reach reg.test: refused (gave up after 4 attempts over 2.5 s)"
    with pytest.raises(IntegrityError, match="digest"):
        mapped(BodySourceFailed(IntegrityError("the source does not match its digest")))
    https_only = FakeResponse(400, body=b"Client sent an HTTP request to an HTTPS server.\n")
    with pytest.raises(ConnectionFailedError, match="speaks HTTPS, not plain HTTP"):
        mapped(https_only)
