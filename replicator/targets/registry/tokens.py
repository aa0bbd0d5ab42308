"""The token-server half of Bearer authentication: asking for a token.

:class:`TokenServerClient` turns a Bearer challenge (realm, service) and a set
of scopes into a :class:`Token`, the way the Docker token protocol and its
OAuth2 variant describe: ``GET <realm>?service=..&scope=..`` with Basic
credentials (or anonymously), or ``POST <realm>`` form-encoded with a
``refresh_token`` (a Docker identity token) or ``password`` grant, falling back
to ``GET`` when the server does not speak OAuth2.

Guarantees:

* Every secret it learns (tokens, refresh tokens) is registered with the log
  redaction (:func:`replicator.observe.logging.register_secret`) before anything
  could log it; messages and log events name the realm's origin only.
* A network failure, 429 or 5xx of the token server is retried
  (:data:`TOKEN_ATTEMPTS` requests in all); every other refusal is one
  :mod:`replicator.errors` exception saying what to do (log in, check the
  password, the server's answer was not a token).
* ``token_requests`` counts every HTTP request made to a token server.
"""

from __future__ import annotations

import json
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import anyio
import structlog

from replicator.errors import (
    AuthenticationError,
    ConnectionFailedError,
    DeniedError,
    ProtocolError,
    RateLimitedError,
    ServerError,
    TLSError,
)
from replicator.observe.logging import register_secret
from replicator.targets.registry._aiohttp import aiohttp
from replicator.targets.registry.challenge import Challenge
from replicator.targets.registry.options import Credentials

log = structlog.get_logger("replicator.auth")

#: ``client_id`` sent in OAuth2 token requests.
CLIENT_ID = "replicator"
#: Lifetime assumed when a token response has no (usable) ``expires_in``.
DEFAULT_TOKEN_LIFETIME = 60.0
#: Largest token response body read into memory.
MAX_TOKEN_RESPONSE = 1024 * 1024
#: Attempts at a token request that fails with a network error, 429 or 5xx.
TOKEN_ATTEMPTS = 3


@dataclass(slots=True)
class Token:
    """A bearer token and when to stop using it (a little before it expires)."""

    value: str = field(repr=False)
    expires_at: float
    #: Issued to replace a token the registry refused, and not accepted by the
    #: registry since: refused too, the token server issues tokens the registry
    #: will not take, and asking again cannot help.
    after_rejection: bool = False
    header: str = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.header = f"Bearer {self.value}"


def refresh_margin(lifetime: float) -> float:
    """How long before expiry a token is replaced: a tenth of its life, at most 10 s."""
    return min(10.0, lifetime / 10.0)


def bad_credentials(host: str) -> AuthenticationError:
    """The error for credentials the registry or its token server refused."""
    return AuthenticationError(
        f"{host}: authentication failed (wrong user name or password?)",
        status=401,
        code="UNAUTHORIZED",
        registry=host,
    )


class TokenServerClient:
    """Asks a registry's token server for tokens (see module doc).

    ``basic`` is the ``Authorization`` value of the user's Basic credentials
    (None when anonymous); ``refresh_token`` an identity token to use in
    OAuth2 refresh grants (replaced by any newer one a response carries).
    """

    def __init__(
        self,
        host: str,
        credentials: Credentials,
        basic: str | None,
        *,
        ssl: ssl.SSLContext | bool | None = None,
        use_password_grant: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.host = host
        self._credentials = credentials
        self._basic = basic
        self.refresh_token = credentials.identity_token
        self._ssl = ssl
        self._use_password_grant = use_password_grant
        self._clock = clock
        self._oauth_post: bool | None = None
        self.token_requests = 0

    @property
    def has_credentials(self) -> bool:
        """Whether any credential (password, identity or registry token) is held."""
        return bool(self._basic or self.refresh_token or self._credentials.registry_token)

    async def request(
        self, session: aiohttp.ClientSession, challenge: Challenge, scopes: frozenset[str]
    ) -> Token:
        """A token covering ``scopes`` from the realm of ``challenge`` (transient failures retried)."""
        last_error: Exception | None = None
        for attempt in range(TOKEN_ATTEMPTS):
            if attempt:
                await anyio.sleep(0.2 * 2**attempt)
            try:
                return await self._request_once(session, challenge, sorted(scopes))
            except (ServerError, RateLimitedError, ConnectionFailedError) as exc:
                last_error = exc
                log.debug("auth.token_request_retried", registry=self.host, attempt=attempt + 1)
        assert last_error is not None
        raise last_error

    async def _request_once(
        self, session: aiohttp.ClientSession, challenge: Challenge, scopes: list[str]
    ) -> Token:
        realm = challenge.realm or ""
        use_post = self._oauth_post is not False and (
            self.refresh_token is not None or (self._use_password_grant and self._basic)
        )
        if use_post:
            status, body = await self._post(session, realm, challenge.service, scopes)
            if status not in (404, 405):
                self._oauth_post = True
                return self._token_from(status, body, realm)
            log.debug("auth.oauth_unsupported", registry=self.host, status=status)
            self._oauth_post = False
        status, body = await self._get(session, realm, challenge.service, scopes)
        return self._token_from(status, body, realm)

    async def _post(
        self, session: aiohttp.ClientSession, realm: str, service: str | None, scopes: list[str]
    ) -> tuple[int, bytes]:
        form: dict[str, str] = {"client_id": CLIENT_ID}
        if service:
            form["service"] = service
        if scopes:
            form["scope"] = " ".join(scopes)
        if self.refresh_token is not None:
            form["grant_type"] = "refresh_token"
            form["refresh_token"] = self.refresh_token
        else:
            form["grant_type"] = "password"
            form["username"] = self._credentials.username or ""
            form["password"] = self._credentials.password or ""
            form["access_type"] = "offline"
        log.debug("auth.token_request", registry=self.host, method="POST", scopes=scopes)
        return await self._send(session, "POST", realm, data=form)

    async def _get(
        self, session: aiohttp.ClientSession, realm: str, service: str | None, scopes: list[str]
    ) -> tuple[int, bytes]:
        params: list[tuple[str, str]] = []
        if service:
            params.append(("service", service))
        params.extend(("scope", s) for s in scopes)
        headers: dict[str, str] = {}
        if self._basic:
            headers["Authorization"] = self._basic
            params.append(("account", self._credentials.username or ""))
        log.debug("auth.token_request", registry=self.host, method="GET", scopes=scopes)
        return await self._send(session, "GET", realm, params=params, headers=headers)

    async def _send(
        self, session: aiohttp.ClientSession, method: str, url: str, **kwargs: Any
    ) -> tuple[int, bytes]:
        """One request to the token server (the session's time-outs apply)."""
        self.token_requests += 1
        if self._ssl is not None:
            kwargs["ssl"] = self._ssl
        where = origin_of(url)
        try:
            async with session.request(method, url, allow_redirects=True, **kwargs) as response:
                body = await response.content.read(MAX_TOKEN_RESPONSE + 1)
                status = response.status
        except aiohttp.ClientSSLError as exc:
            raise TLSError(
                f"{self.host}: TLS verification of token server {where} failed: "
                f"{type(exc).__name__}"
            ) from None
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise ConnectionFailedError(
                f"{self.host}: token server {where} unreachable ({type(exc).__name__})"
            ) from None
        log.debug("auth.token_answered", registry=self.host, status=status)
        if len(body) > MAX_TOKEN_RESPONSE:
            raise ProtocolError(
                f"{self.host}: token server response is larger than {MAX_TOKEN_RESPONSE} bytes",
                registry=self.host,
            )
        return status, body

    def _token_from(self, status: int, body: bytes, realm: str) -> Token:
        """The token in a token server's answer, or the error its status means."""
        where = origin_of(realm)
        if status != 200:
            raise self._refusal(status, where)
        try:
            doc = json.loads(body)
        except ValueError:
            doc = None
        if not isinstance(doc, dict):
            raise ProtocolError(
                f"{self.host}: token server {where} sent a response that is not a JSON object",
                registry=self.host,
            )
        value = doc.get("token") or doc.get("access_token")
        if not isinstance(value, str) or not value:
            raise ProtocolError(
                f"{self.host}: token server {where} sent no token", registry=self.host
            )
        register_secret(value)
        refresh = doc.get("refresh_token")
        if isinstance(refresh, str) and refresh:
            register_secret(refresh)
            self.refresh_token = refresh
        lifetime = _lifetime(doc.get("expires_in"))
        log.debug("auth.token_issued", registry=self.host, expires_in=lifetime)
        return Token(value=value, expires_at=self._clock() + lifetime - refresh_margin(lifetime))

    def _refusal(self, status: int, where: str) -> Exception:
        """The error for a token server answering ``status`` (not 200)."""
        host = self.host
        if status == 401:
            if self.has_credentials:
                return bad_credentials(host)
            return AuthenticationError(
                f"{host}: authentication required (the token server {where} refused "
                f"anonymous access); log in with 'replicator login {host}'",
                status=401,
                registry=host,
            )
        if status == 403:
            return DeniedError(
                f"{host}: denied by the token server {where}",
                status=403,
                code="DENIED",
                registry=host,
            )
        if status == 429:
            return RateLimitedError(
                f"{host}: token server {where} is rate limiting (429)", status=429, registry=host
            )
        if status >= 500:
            return ServerError(
                f"{host}: token server {where} failed with HTTP {status}",
                status=status,
                registry=host,
            )
        return ProtocolError(
            f"{host}: token server {where} answered HTTP {status}", status=status, registry=host
        )


def _lifetime(raw: object) -> float:
    if isinstance(raw, bool) or not isinstance(raw, int | float) or raw <= 0:
        return DEFAULT_TOKEN_LIFETIME
    return float(raw)


def origin_of(url: str) -> str:
    """``scheme://host[:port]`` of a URL: what error messages show of a realm."""
    parts = urlsplit(url)
    host = parts.hostname or "?"
    if parts.port:
        host = f"{host}:{parts.port}"
    return f"{parts.scheme}://{host}"
