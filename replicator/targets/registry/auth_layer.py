"""The authentication layer of the transport: credentials on, challenges answered.

:class:`AuthLayer` asks the host's :class:`AuthProvider` (the
:class:`~.auth.Authenticator`) for the headers of each request going to the
registry's own origin, sends it down, and answers a ``401`` that carries a
``WWW-Authenticate`` challenge by asking the provider again and re-sending.

Guarantees:

* Credentials go to the registry's own origin only; a request to any other
  origin is passed down untouched.
* Re-authentication is bounded *per request*: at most :data:`MAX_CHALLENGES`
  answers to challenges, and one :class:`~.challenge.ChallengeRound` per
  request lets the provider replace a refused credential once (a second
  refusal in the same request is an error), however long the run.
* A request that carried a credential and got anything but a 401 tells the
  provider the credential was accepted (:meth:`AuthProvider.accepted`).
* The provider's count of token-server requests is copied into the request
  statistics after every call, so ``stats.token`` is always current.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from multidict import CIMultiDict
from yarl import URL

from replicator.targets.base import RequestStats
from replicator.targets.registry._aiohttp import aiohttp
from replicator.targets.registry.challenge import ChallengeRound
from replicator.targets.registry.exchange import Layer, Outgoing, same_origin

#: Challenges answered for one request at most (anonymous → token → fresh token).
MAX_CHALLENGES = 3


class AuthProvider(Protocol):
    """What the transport needs from an authenticator (see ``auth.Authenticator``)."""

    @property
    def token_requests(self) -> int:
        """Requests sent to a token server so far."""
        ...

    async def authorize(
        self, session: aiohttp.ClientSession, scopes: Sequence[str]
    ) -> dict[str, str]:
        """Headers for a request needing ``scopes`` from what is already known."""
        ...

    async def on_challenge(
        self,
        session: aiohttp.ClientSession,
        www_authenticate: str,
        scopes: Sequence[str],
        *,
        sent_authorization: str | None = None,
        challenge_round: ChallengeRound | None = None,
    ) -> dict[str, str]:
        """Answer a 401 challenge; headers to retry with (raises AuthenticationError)."""
        ...

    def accepted(self, authorization: str) -> None:
        """A request carrying ``authorization`` got an answer other than 401."""
        ...


class AuthLayer:
    """Adds credentials and answers challenges for one registry (see module doc)."""

    def __init__(
        self,
        inner: Layer,
        auth: AuthProvider,
        session: Callable[[], aiohttp.ClientSession],
        origin: URL,
        stats: RequestStats,
    ) -> None:
        self.inner = inner
        self.auth = auth
        self._session = session
        self.origin = origin
        self.stats = stats

    async def send(self, request: Outgoing) -> aiohttp.ClientResponse:
        """Send ``request`` with credentials; answer its challenges; the final answer."""
        if not same_origin(request.url, self.origin):
            return await self.inner.send(request)
        scopes = request.spec.scopes
        headers = self._with(request, await self._authorize(scopes))
        response = await self.inner.send(request.with_headers(headers))
        challenge_round = ChallengeRound()
        for _ in range(MAX_CHALLENGES):
            challenge = self._challenge_of(response)
            if challenge is None:
                break
            response.release()
            answer = await self._answer(challenge, scopes, headers, challenge_round)
            headers = self._with(request, answer)
            response = await self.inner.send(request.with_headers(headers, attempt=1))
        sent = headers.get("Authorization")
        if sent is not None and response.status != 401:
            self.auth.accepted(sent)
        return response

    def _challenge_of(self, response: aiohttp.ClientResponse) -> str | None:
        """The ``WWW-Authenticate`` of a 401 from the registry itself, if any."""
        if response.status != 401 or not same_origin(response.url, self.origin):
            return None
        return response.headers.get("WWW-Authenticate") or None

    @staticmethod
    def _with(request: Outgoing, auth_headers: dict[str, str]) -> CIMultiDict[str]:
        headers = request.headers.copy()
        headers.update(auth_headers)
        return headers

    async def _authorize(self, scopes: Sequence[str]) -> dict[str, str]:
        try:
            return await self.auth.authorize(self._session(), list(scopes))
        finally:
            self.stats.token = self.auth.token_requests

    async def _answer(
        self,
        challenge: str,
        scopes: Sequence[str],
        sent: CIMultiDict[str],
        challenge_round: ChallengeRound,
    ) -> dict[str, str]:
        try:
            return await self.auth.on_challenge(
                self._session(),
                challenge,
                list(scopes),
                sent_authorization=sent.get("Authorization"),
                challenge_round=challenge_round,
            )
        finally:
            self.stats.token = self.auth.token_requests
