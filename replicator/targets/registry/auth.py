"""Registry authentication: ``WWW-Authenticate`` challenges, Basic and Bearer tokens.

The registry client asks an :class:`Authenticator` (one per registry host) for the
headers of each request with :meth:`Authenticator.authorize`, and hands it the
``WWW-Authenticate`` header of every 401 with :meth:`Authenticator.on_challenge`.

What it guarantees:

* After the first Basic challenge every later request carries
  ``Authorization: Basic ...`` up front: no 401 round trip per request.
* Bearer tokens are requested for the *set* of scopes a request needs (several
  ``scope=`` parameters in one token request, e.g. ``pull`` on a mount source and
  ``pull,push`` on the target), cached per scope set until shortly before they
  expire, and shared: concurrent requests for the same scope set wait for one
  token request.
* Once the token realm is known, tokens for new scope sets are fetched before the
  request goes out, so a new repository costs no extra 401.
* Secrets (passwords, identity tokens, bearer tokens, Basic header values) never
  appear in logs, exception messages or reprs; each one is registered with the
  log redaction processor when that module is available.
"""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

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
from replicator.targets.registry._aiohttp import aiohttp
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

_TOKEN_CHARS = frozenset(
    "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
)
_TOKEN68_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~+/")


# --------------------------------------------------------------------------- parsing


@dataclass(frozen=True, slots=True)
class Challenge:
    """One challenge of a ``WWW-Authenticate`` header.

    ``scheme`` is lower-cased (``"bearer"``, ``"basic"``); parameter names are
    lower-cased, values are unquoted and unescaped.  ``token68`` holds the rare
    bare credential form (``Negotiate abc==``).
    """

    scheme: str
    params: Mapping[str, str] = field(default_factory=dict)
    token68: str | None = None

    @property
    def realm(self) -> str | None:
        """The ``realm`` parameter: the token server URL for Bearer."""
        return self.params.get("realm")

    @property
    def service(self) -> str | None:
        """The ``service`` parameter, echoed in token requests."""
        return self.params.get("service")

    @property
    def error(self) -> str | None:
        """The ``error`` parameter (``invalid_token``, ``insufficient_scope``...)."""
        return self.params.get("error")

    @property
    def scopes(self) -> list[str]:
        """The scopes named by the ``scope`` parameter (space separated)."""
        return (self.params.get("scope") or "").split()


def _skip_ws(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t":
        pos += 1
    return pos


def _read_token(text: str, pos: int) -> tuple[str, int]:
    start = pos
    while pos < len(text) and text[pos] in _TOKEN_CHARS:
        pos += 1
    return text[start:pos], pos


def _read_quoted(text: str, pos: int) -> tuple[str, int]:
    """Read a quoted-string starting at the opening quote; tolerate a missing close."""
    out: list[str] = []
    pos += 1
    while pos < len(text):
        char = text[pos]
        if char == "\\" and pos + 1 < len(text):
            out.append(text[pos + 1])
            pos += 2
            continue
        if char == '"':
            return "".join(out), pos + 1
        out.append(char)
        pos += 1
    return "".join(out), pos


def _read_value(text: str, pos: int) -> tuple[str, int]:
    pos = _skip_ws(text, pos)
    if pos < len(text) and text[pos] == '"':
        return _read_quoted(text, pos)
    start = pos
    while pos < len(text) and text[pos] not in ", \t":
        pos += 1
    return text[start:pos], pos


def _try_token68(text: str, pos: int) -> tuple[str, int] | None:
    """A token68 right after the scheme: ``[A-Za-z0-9-._~+/]+=*`` then end or comma."""
    end = pos
    while end < len(text) and text[end] in _TOKEN68_CHARS:
        end += 1
    if end == pos:
        return None
    stop = end
    while stop < len(text) and text[stop] == "=":
        stop += 1
    after = _skip_ws(text, stop)
    if after < len(text) and text[after] != ",":
        return None
    return text[pos:stop], after


def _is_param_ahead(text: str, pos: int) -> bool:
    """Whether ``pos`` starts ``name =`` (an auth-param) rather than a new scheme."""
    name, after = _read_token(text, _skip_ws(text, pos))
    if not name:
        return False
    after = _skip_ws(text, after)
    return after < len(text) and text[after] == "="


def parse_www_authenticate(header: str) -> list[Challenge]:
    """Parse a ``WWW-Authenticate`` header into its challenges (RFC 9110 §11.6.1).

    Pure and total: never raises.  Handles several challenges in one header
    (``Basic realm="a", Bearer realm="b",service="c"``), quoted values with
    commas and backslash-escaped quotes, unquoted values, odd white space and
    repeated commas.  Malformed bits are skipped rather than guessed at; the
    first occurrence of a repeated parameter wins.
    """
    challenges: list[Challenge] = []
    pos = 0
    length = len(header)
    while pos < length:
        while pos < length and header[pos] in ", \t":
            pos += 1
        scheme, pos = _read_token(header, pos)
        if not scheme:
            # Skip a character we cannot make sense of and go on.
            pos += 1
            continue
        params: dict[str, str] = {}
        token68: str | None = None
        pos = _skip_ws(header, pos)
        if pos < length and header[pos] != ",":
            found = _try_token68(header, pos)
            if found is not None:
                token68, pos = found
        while pos < length:
            probe = pos
            while probe < length and header[probe] in ", \t":
                probe += 1
            if not _is_param_ahead(header, probe):
                break
            name, probe = _read_token(header, probe)
            probe = _skip_ws(header, probe) + 1  # past "="
            value, probe = _read_value(header, probe)
            params.setdefault(name.lower(), value)
            pos = _skip_ws(header, probe)
            if pos < length and header[pos] not in ",":
                # Junk after a value: skip to the next comma.
                while pos < length and header[pos] != ",":
                    pos += 1
        challenges.append(Challenge(scheme=scheme.lower(), params=params, token68=token68))
    return challenges


def challenge_error(www_authenticate: str) -> str | None:
    """The ``error`` parameter of the Bearer (else first) challenge, if any."""
    challenges = parse_www_authenticate(www_authenticate)
    for challenge in challenges:
        if challenge.scheme == "bearer":
            return challenge.error
    return challenges[0].error if challenges else None


def is_insufficient_scope(www_authenticate: str) -> bool:
    """True when a 401 says the token was valid but lacks the rights asked for.

    The client reports such a 401 as :class:`~replicator.errors.DeniedError`
    (authenticated, not allowed) rather than as a credentials problem.
    """
    return challenge_error(www_authenticate) == "insufficient_scope"


# --------------------------------------------------------------------------- scopes


def normalize_scopes(scopes: Iterable[str]) -> frozenset[str]:
    """Merge scopes into a canonical set: one entry per resource, actions sorted.

    ``repository:a:pull`` and ``repository:a:push`` become
    ``repository:a:pull,push``; the result is usable as a cache key.
    """
    actions: dict[str, set[str]] = {}
    for scope in scopes:
        scope = scope.strip()
        if not scope:
            continue
        resource, sep, acts = scope.rpartition(":")
        if not sep or not resource:
            actions.setdefault(scope, set())
            continue
        bucket = actions.setdefault(resource, set())
        bucket.update(a for a in acts.split(",") if a)
    return frozenset(
        f"{resource}:{','.join(sorted(acts))}" if acts else resource
        for resource, acts in actions.items()
    )


# --------------------------------------------------------------------------- secrets


def _register_secret(value: str | None) -> None:
    """Hand a secret to the log redaction processor, if that module exists."""
    if not value:
        return
    try:
        from replicator.observe.logging import register_secret
    except ImportError:
        return
    register_secret(value)


def basic_header(username: str, password: str) -> str:
    """The ``Authorization`` value for Basic auth (registered as a secret)."""
    raw = f"{username}:{password}".encode()
    value = "Basic " + base64.b64encode(raw).decode("ascii")
    _register_secret(value.split(" ", 1)[1])
    return value


# --------------------------------------------------------------------------- tokens


@dataclass(slots=True)
class _Token:
    value: str = field(repr=False)
    expires_at: float
    #: Fetched because an earlier token for the same scopes was rejected.
    after_rejection: bool = False

    @property
    def header(self) -> str:
        return f"Bearer {self.value}"


def _refresh_margin(lifetime: float) -> float:
    """How long before expiry a token is replaced: a tenth of its life, at most 10 s."""
    return min(10.0, lifetime / 10.0)


class Authenticator:
    """Authentication state for one registry host.

    ``credentials`` may be ``None`` (anonymous).  A ``registry_token`` in the
    credentials is sent as ``Bearer`` on every request, as is.  An
    ``identity_token`` is used as an OAuth2 refresh token (POST to the realm,
    GET fallback when the token server does not speak OAuth2).

    ``ssl`` is passed to every token request when given (the client's session
    normally carries the TLS settings already).  ``clock`` is injectable for
    tests.  ``token_requests`` counts HTTP requests made to the token server.
    """

    def __init__(
        self,
        host: str,
        credentials: Credentials | None,
        *,
        ssl: ssl.SSLContext | bool | None = None,
        use_password_grant: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.host = host
        self._credentials = credentials or Credentials()
        self._ssl = ssl
        self._use_password_grant = use_password_grant
        self._clock = clock
        self._basic: str | None = None
        creds = self._credentials
        if creds.username is not None and creds.password is not None:
            self._basic = basic_header(creds.username, creds.password)
        for secret in creds.secrets():
            _register_secret(secret)
        self._refresh_token = creds.identity_token
        self._scheme: str | None = None
        self._bearer: Challenge | None = None
        self._tokens: dict[frozenset[str], _Token] = {}
        self._locks: dict[frozenset[str], asyncio.Lock] = {}
        self._oauth_post: bool | None = None
        self.token_requests = 0

    def __repr__(self) -> str:
        user = self._credentials.username
        return f"Authenticator(host={self.host!r}, user={user!r}, scheme={self._scheme!r})"

    @property
    def scheme(self) -> str | None:
        """``"basic"`` or ``"bearer"`` once a challenge was seen, else ``None``."""
        return self._scheme

    @property
    def has_credentials(self) -> bool:
        """Whether any credential (password, identity or registry token) is held."""
        return bool(self._basic or self._refresh_token or self._credentials.registry_token)

    # ------------------------------------------------------------------ public API

    async def authorize(
        self, session: aiohttp.ClientSession, scopes: Sequence[str]
    ) -> dict[str, str]:
        """Headers to send with a request that needs ``scopes``.

        Returns ``{}`` while no challenge has been seen (the first request goes
        out anonymously and its 401 teaches us the scheme).  Under Bearer, a
        missing or nearly expired token for this scope set is fetched first
        (one shared token request for concurrent callers).
        """
        preset = self._credentials.registry_token
        if preset:
            return {"Authorization": f"Bearer {preset}"}
        if self._scheme == "basic" and self._basic:
            return {"Authorization": self._basic}
        if self._scheme == "bearer" and self._bearer is not None:
            token = await self._token_for(session, normalize_scopes(scopes), (), None)
            return {"Authorization": token.header}
        return {}

    async def on_challenge(
        self,
        session: aiohttp.ClientSession,
        www_authenticate: str,
        scopes: Sequence[str],
        *,
        sent_authorization: str | None = None,
    ) -> dict[str, str]:
        """Handle a 401 and return the headers to retry the request with.

        ``sent_authorization`` is the ``Authorization`` value the failed request
        carried (``None`` if it had none).  When that is exactly the credential
        currently held, the credential itself was refused:

        * Basic → :class:`AuthenticationError` (wrong user name or password);
        * Bearer with ``error="insufficient_scope"`` → :class:`DeniedError`
          (or :class:`AuthenticationError` when anonymous);
        * another Bearer rejection → one fresh token, and an
          :class:`AuthenticationError` if that one is refused too.

        Otherwise (no header sent, or a stale one, e.g. another task refreshed
        meanwhile) the current credential is returned.  Raises
        :class:`AuthenticationError` for a challenge we cannot answer (no
        credentials for Basic, unknown scheme) and whatever the token request
        raises.  Callers retry a request once after a challenge.
        """
        challenges = parse_www_authenticate(www_authenticate)
        bearer = next((c for c in challenges if c.scheme == "bearer"), None)
        basic = next((c for c in challenges if c.scheme == "basic"), None)
        preset = self._credentials.registry_token
        log.debug(
            "auth.challenge",
            registry=self.host,
            schemes=[c.scheme for c in challenges],
            error=next((c.error for c in challenges if c.error), None),
        )
        if preset:
            header = f"Bearer {preset}"
            if sent_authorization == header:
                raise self._refused_error(bearer, scopes, token_kind="registry token")
            return {"Authorization": header}
        if bearer is not None:
            return await self._on_bearer(session, bearer, scopes, sent_authorization)
        if basic is not None:
            return self._on_basic(sent_authorization)
        shown = ", ".join(sorted({c.scheme for c in challenges})) or "none"
        raise AuthenticationError(
            f"{self.host}: unsupported authentication scheme ({shown})",
            status=401,
            registry=self.host,
        )

    def invalidate(self, scopes: Sequence[str] | None = None) -> None:
        """Forget cached tokens (for ``scopes``, or all of them)."""
        if scopes is None:
            self._tokens.clear()
        else:
            self._tokens.pop(normalize_scopes(scopes), None)

    # ------------------------------------------------------------------ challenges

    def _on_basic(self, sent_authorization: str | None) -> dict[str, str]:
        if not self._basic:
            raise AuthenticationError(
                f"{self.host}: authentication required; log in with "
                f"'replicator login {self.host}' or pass --username/--password",
                status=401,
                registry=self.host,
            )
        if self._scheme != "basic":
            log.debug("auth.basic", registry=self.host)
        self._scheme = "basic"
        if sent_authorization == self._basic:
            raise self._bad_credentials()
        return {"Authorization": self._basic}

    async def _on_bearer(
        self,
        session: aiohttp.ClientSession,
        challenge: Challenge,
        scopes: Sequence[str],
        sent_authorization: str | None,
    ) -> dict[str, str]:
        realm = challenge.realm
        if not realm or urlsplit(realm).scheme not in ("http", "https"):
            raise ProtocolError(
                f"{self.host}: Bearer challenge without a usable realm URL",
                status=401,
                registry=self.host,
            )
        if self._bearer is None or self._bearer.realm != realm:
            self._tokens.clear()
        self._bearer = Challenge("bearer", {k: v for k, v in challenge.params.items()})
        self._scheme = "bearer"
        key = normalize_scopes(scopes)
        token = await self._token_for(
            session, key, challenge.scopes, (sent_authorization, challenge)
        )
        return {"Authorization": token.header}

    async def _token_for(
        self,
        session: aiohttp.ClientSession,
        key: frozenset[str],
        extra_scopes: Sequence[str],
        rejection: tuple[str | None, Challenge] | None,
    ) -> _Token:
        """The token for ``key``: cached, or fetched once under the key's lock.

        ``rejection`` is set when called from a 401: (the header that request
        carried, the challenge).  If that header is the cached token, the token
        was refused and is not reused.
        """
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            cached = self._tokens.get(key)
            after_rejection = False
            if cached is not None and rejection is not None:
                sent, challenge = rejection
                if sent == cached.header:
                    if challenge.error == "insufficient_scope":
                        raise self._refused_error(challenge, sorted(key), token_kind="token")
                    if cached.after_rejection:
                        raise AuthenticationError(
                            f"{self.host}: the registry refused the token its token server "
                            f"issued ({challenge.error or 'no reason given'})",
                            status=401,
                            registry=self.host,
                        )
                    self._tokens.pop(key, None)
                    cached = None
                    after_rejection = True
            if cached is not None and self._clock() < cached.expires_at:
                return cached
            token = await self._request_token(session, key | normalize_scopes(extra_scopes))
            token.after_rejection = after_rejection
            self._tokens[key] = token
            return token

    # ------------------------------------------------------------------ token server

    async def _request_token(
        self, session: aiohttp.ClientSession, scopes: frozenset[str]
    ) -> _Token:
        """Ask the token server for a token covering ``scopes`` (retrying transient failures)."""
        assert self._bearer is not None
        realm = self._bearer.realm or ""
        last_error: Exception | None = None
        for attempt in range(TOKEN_ATTEMPTS):
            if attempt:
                await asyncio.sleep(0.2 * 2**attempt)
            try:
                return await self._request_token_once(session, realm, scopes)
            except (ServerError, RateLimitedError, ConnectionFailedError) as exc:
                last_error = exc
                log.debug("auth.token_retry", registry=self.host, attempt=attempt + 1)
        assert last_error is not None
        raise last_error

    async def _request_token_once(
        self, session: aiohttp.ClientSession, realm: str, scopes: frozenset[str]
    ) -> _Token:
        assert self._bearer is not None
        service = self._bearer.service
        ordered = sorted(scopes)
        use_post = self._oauth_post is not False and (
            self._refresh_token is not None or (self._use_password_grant and self._basic)
        )
        if use_post:
            status, body = await self._post_token(session, realm, service, ordered)
            if status in (404, 405):
                log.debug("auth.oauth_unsupported", registry=self.host, status=status)
                self._oauth_post = False
            else:
                self._oauth_post = True
                return self._token_from_response(status, body, realm)
        status, body = await self._get_token(session, realm, service, ordered)
        return self._token_from_response(status, body, realm)

    async def _post_token(
        self, session: aiohttp.ClientSession, realm: str, service: str | None, scopes: list[str]
    ) -> tuple[int, bytes]:
        form: dict[str, str] = {"client_id": CLIENT_ID}
        if service:
            form["service"] = service
        if scopes:
            form["scope"] = " ".join(scopes)
        if self._refresh_token is not None:
            form["grant_type"] = "refresh_token"
            form["refresh_token"] = self._refresh_token
        else:
            form["grant_type"] = "password"
            form["username"] = self._credentials.username or ""
            form["password"] = self._credentials.password or ""
            form["access_type"] = "offline"
        log.debug("auth.token_request", registry=self.host, method="POST", scopes=scopes)
        return await self._send(session, "POST", realm, data=form)

    async def _get_token(
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
        self.token_requests += 1
        if self._ssl is not None:
            kwargs["ssl"] = self._ssl
        where = _origin(url)
        try:
            async with session.request(
                method,
                url,
                timeout=aiohttp.ClientTimeout(total=60),
                allow_redirects=True,
                **kwargs,
            ) as response:
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
        log.debug("auth.token_response", registry=self.host, status=status)
        if len(body) > MAX_TOKEN_RESPONSE:
            raise ProtocolError(
                f"{self.host}: token server response is larger than {MAX_TOKEN_RESPONSE} bytes",
                registry=self.host,
            )
        return status, body

    def _token_from_response(self, status: int, body: bytes, realm: str) -> _Token:
        where = _origin(realm)
        if status == 401:
            if self.has_credentials:
                raise self._bad_credentials()
            raise AuthenticationError(
                f"{self.host}: authentication required (the token server {where} refused "
                f"anonymous access); log in with 'replicator login {self.host}'",
                status=401,
                registry=self.host,
            )
        if status == 403:
            raise DeniedError(
                f"{self.host}: denied by the token server {where}",
                status=403,
                code="DENIED",
                registry=self.host,
            )
        if status == 429:
            raise RateLimitedError(
                f"{self.host}: token server {where} is rate limiting (429)",
                status=429,
                registry=self.host,
            )
        if status >= 500:
            raise ServerError(
                f"{self.host}: token server {where} failed with HTTP {status}",
                status=status,
                registry=self.host,
            )
        if status != 200:
            raise ProtocolError(
                f"{self.host}: token server {where} answered HTTP {status}",
                status=status,
                registry=self.host,
            )
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
        _register_secret(value)
        refresh = doc.get("refresh_token")
        if isinstance(refresh, str) and refresh:
            _register_secret(refresh)
            self._refresh_token = refresh
        lifetime = _lifetime(doc.get("expires_in"))
        log.debug("auth.token_issued", registry=self.host, expires_in=lifetime)
        expires_at = self._clock() + lifetime - _refresh_margin(lifetime)
        return _Token(value=value, expires_at=expires_at)

    # ------------------------------------------------------------------ errors

    def _bad_credentials(self) -> AuthenticationError:
        return AuthenticationError(
            f"{self.host}: authentication failed (wrong user name or password?)",
            status=401,
            code="UNAUTHORIZED",
            registry=self.host,
        )

    def _refused_error(
        self, challenge: Challenge | None, scopes: Sequence[str], *, token_kind: str
    ) -> AuthenticationError | DeniedError:
        wanted = " ".join(sorted(scopes)) or "this request"
        if challenge is not None and challenge.error == "insufficient_scope":
            if not self.has_credentials:
                return AuthenticationError(
                    f"{self.host}: authentication required for {wanted}; log in with "
                    f"'replicator login {self.host}'",
                    status=401,
                    registry=self.host,
                )
            return DeniedError(
                f"{self.host}: denied: the credentials do not grant {wanted}",
                status=401,
                code="DENIED",
                registry=self.host,
            )
        return AuthenticationError(
            f"{self.host}: the registry refused the {token_kind}", status=401, registry=self.host
        )


def _lifetime(raw: object) -> float:
    if isinstance(raw, bool) or not isinstance(raw, int | float) or raw <= 0:
        return DEFAULT_TOKEN_LIFETIME
    return float(raw)


def _origin(url: str) -> str:
    """``scheme://host[:port]`` of a URL: what error messages show of a realm."""
    parts = urlsplit(url)
    host = parts.hostname or "?"
    if parts.port:
        host = f"{host}:{parts.port}"
    return f"{parts.scheme}://{host}"
