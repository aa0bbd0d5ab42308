"""Registry authentication state: which credential each request carries.

The transport's authentication layer asks an :class:`Authenticator` (one per
registry host) for the headers of each request with :meth:`Authenticator.authorize`,
hands it the ``WWW-Authenticate`` header of every 401 with
:meth:`Authenticator.on_challenge`, and reports with
:meth:`Authenticator.accepted` that a credential worked.  Challenge parsing
lives in :mod:`.challenge`, token requests in :mod:`.tokens`.

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
* A token the registry refuses (expired early, revoked, clock skew) is replaced
  by a fresh one, as often as that happens in a run, but once per request: the
  fresh one refused within the same request, or refused before the registry
  ever accepted it, is an :class:`~replicator.errors.AuthenticationError`.
* Secrets (passwords, identity tokens, bearer tokens, Basic header values) never
  appear in logs, exception messages or reprs; each one is registered with the
  log redaction (:func:`replicator.observe.logging.register_secret`).
"""

from __future__ import annotations

import base64
import ssl
import time
from collections.abc import Callable, Sequence
from urllib.parse import urlsplit

import anyio
import structlog

from replicator.errors import AuthenticationError, DeniedError, ProtocolError
from replicator.observe.logging import register_secret
from replicator.targets.registry._aiohttp import aiohttp
from replicator.targets.registry.challenge import (
    Challenge,
    ChallengeRound,
    normalize_scopes,
    parse_www_authenticate,
)
from replicator.targets.registry.options import Credentials
from replicator.targets.registry.tokens import Token, TokenServerClient, bad_credentials

log = structlog.get_logger("replicator.auth")


def basic_header(username: str, password: str) -> str:
    """The ``Authorization`` value for Basic auth (registered as a secret)."""
    raw = f"{username}:{password}".encode()
    value = "Basic " + base64.b64encode(raw).decode("ascii")
    register_secret(value.split(" ", 1)[1])
    return value


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
        self._clock = clock
        creds = self._credentials
        self._basic: str | None = None
        if creds.username is not None and creds.password is not None:
            self._basic = basic_header(creds.username, creds.password)
        for secret in creds.secrets():
            register_secret(secret)
        self._tokens_client = TokenServerClient(
            host, creds, self._basic, ssl=ssl, use_password_grant=use_password_grant, clock=clock
        )
        self._scheme: str | None = None
        self._bearer: Challenge | None = None
        self._tokens: dict[frozenset[str], Token] = {}
        self._locks: dict[frozenset[str], anyio.Lock] = {}
        #: Tokens issued after a rejection that no request has proven good yet.
        self._unproven: dict[str, Token] = {}

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
        return self._tokens_client.has_credentials

    @property
    def token_requests(self) -> int:
        """HTTP requests made to the token server so far."""
        return self._tokens_client.token_requests

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
            key = normalize_scopes(scopes)
            cached = self._tokens.get(key)
            if cached is None or self._clock() >= cached.expires_at:
                cached = await self._token_for(session, key, (), None, ChallengeRound())
            return {"Authorization": cached.header}
        return {}

    async def on_challenge(
        self,
        session: aiohttp.ClientSession,
        www_authenticate: str,
        scopes: Sequence[str],
        *,
        sent_authorization: str | None = None,
        challenge_round: ChallengeRound | None = None,
    ) -> dict[str, str]:
        """Handle a 401 and return the headers to retry the request with.

        ``sent_authorization`` is the ``Authorization`` value the failed request
        carried (``None`` if it had none); ``challenge_round`` the state of
        that request's challenges so far (a fresh round when not given).  When
        the header sent is exactly the credential currently held, the
        credential itself was refused:

        * Basic → :class:`AuthenticationError` (wrong user name or password);
        * Bearer with ``error="insufficient_scope"`` → :class:`DeniedError`
          (or :class:`AuthenticationError` when anonymous);
        * another Bearer rejection → a fresh token, unless this round already
          got one or the refused token was itself a replacement the registry
          never accepted: then :class:`AuthenticationError`.

        Otherwise (no header sent, or a stale one, e.g. another task refreshed
        meanwhile) the current credential is returned.  Raises
        :class:`AuthenticationError` for a challenge we cannot answer (no
        credentials for Basic, unknown scheme) and whatever the token request
        raises.
        """
        challenges = parse_www_authenticate(www_authenticate)
        bearer = next((c for c in challenges if c.scheme == "bearer"), None)
        basic = next((c for c in challenges if c.scheme == "basic"), None)
        log.debug(
            "auth.challenge_received",
            registry=self.host,
            schemes=[c.scheme for c in challenges],
            error=next((c.error for c in challenges if c.error), None),
        )
        preset = self._credentials.registry_token
        if preset:
            return self._on_preset(preset, bearer, scopes, sent_authorization)
        if bearer is not None:
            round_ = challenge_round if challenge_round is not None else ChallengeRound()
            return await self._on_bearer(session, bearer, scopes, sent_authorization, round_)
        if basic is not None:
            return self._on_basic(sent_authorization)
        shown = ", ".join(sorted({c.scheme for c in challenges})) or "none"
        raise AuthenticationError(
            f"{self.host}: unsupported authentication scheme ({shown})",
            status=401,
            registry=self.host,
        )

    def accepted(self, authorization: str) -> None:
        """A request carrying ``authorization`` got an answer other than 401.

        A token issued to replace a refused one is proven good by this: refused
        later on (expired early, revoked), it is simply replaced again.
        """
        if self._unproven:
            token = self._unproven.pop(authorization, None)
            if token is not None:
                token.after_rejection = False

    def invalidate(self, scopes: Sequence[str] | None = None) -> None:
        """Forget cached tokens (for ``scopes``, or all of them)."""
        if scopes is None:
            self._tokens.clear()
        else:
            self._tokens.pop(normalize_scopes(scopes), None)

    # ------------------------------------------------------------------ challenges

    def _on_preset(
        self,
        preset: str,
        bearer: Challenge | None,
        scopes: Sequence[str],
        sent_authorization: str | None,
    ) -> dict[str, str]:
        header = f"Bearer {preset}"
        if sent_authorization == header:
            raise self._refused_error(bearer, scopes, token_kind="registry token")
        return {"Authorization": header}

    def _on_basic(self, sent_authorization: str | None) -> dict[str, str]:
        if not self._basic:
            raise AuthenticationError(
                f"{self.host}: authentication required; log in with "
                f"'replicator login {self.host}' or pass --username/--password",
                status=401,
                registry=self.host,
            )
        if self._scheme != "basic":
            log.debug("auth.basic_chosen", registry=self.host)
        self._scheme = "basic"
        if sent_authorization == self._basic:
            raise bad_credentials(self.host)
        return {"Authorization": self._basic}

    async def _on_bearer(
        self,
        session: aiohttp.ClientSession,
        challenge: Challenge,
        scopes: Sequence[str],
        sent_authorization: str | None,
        challenge_round: ChallengeRound,
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
        self._bearer = Challenge("bearer", dict(challenge.params))
        self._scheme = "bearer"
        key = normalize_scopes(scopes)
        rejection = (sent_authorization, challenge)
        token = await self._token_for(session, key, challenge.scopes, rejection, challenge_round)
        return {"Authorization": token.header}

    async def _token_for(
        self,
        session: aiohttp.ClientSession,
        key: frozenset[str],
        extra_scopes: Sequence[str],
        rejection: tuple[str | None, Challenge] | None,
        challenge_round: ChallengeRound,
    ) -> Token:
        """The token for ``key``: cached, or fetched once under the key's lock.

        ``rejection`` is set when called from a 401: (the header that request
        carried, the challenge).  If that header is the cached token, the token
        was refused and is replaced (see :meth:`_refused`).
        """
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = anyio.Lock()
        async with lock:
            cached = self._tokens.get(key)
            renewal = False
            if cached is not None and rejection is not None and rejection[0] == cached.header:
                self._refused(cached, rejection[1], key, challenge_round)
                self._tokens.pop(key, None)
                self._unproven.pop(cached.header, None)
                cached, renewal = None, True
            if cached is not None and self._clock() < cached.expires_at:
                return cached
            assert self._bearer is not None
            token = await self._tokens_client.request(
                session, self._bearer, key | normalize_scopes(extra_scopes)
            )
            if renewal:
                token.after_rejection = True
                challenge_round.renewed = True
                self._unproven[token.header] = token
            self._tokens[key] = token
            return token

    def _refused(
        self,
        token: Token,
        challenge: Challenge,
        key: frozenset[str],
        challenge_round: ChallengeRound,
    ) -> None:
        """The registry refused the current ``token``: raise unless a fresh one may follow."""
        if challenge.error == "insufficient_scope":
            raise self._refused_error(challenge, sorted(key), token_kind="token")
        if token.after_rejection or challenge_round.renewed:
            raise AuthenticationError(
                f"{self.host}: the registry refused the token its token server "
                f"issued ({challenge.error or 'no reason given'})",
                status=401,
                registry=self.host,
            )
        log.debug("auth.token_refused", registry=self.host, error=challenge.error)

    # ------------------------------------------------------------------ errors

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
