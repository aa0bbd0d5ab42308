"""A Docker/OCI registry token server for tests, run as its own process.

``python -m tests.infra.token_server --port P --key KEY.pem --cert CERT.pem --users USERS.json``

Implements the two halves of the distribution token-auth protocol:

* ``GET /token?service=S&scope=A&scope=B[&offline_token=true]`` with HTTP Basic
  credentials or anonymously;
* ``POST /token`` (OAuth2, form encoded): ``grant_type=password`` with
  ``username``/``password``, or ``grant_type=refresh_token`` with
  ``refresh_token``; ``service``, ``scope`` (space-separated), ``client_id``,
  ``access_type=offline``.  Password grants always return a ``refresh_token``.

Tokens are RS256 JWTs whose header carries ``x5c`` = [the signing certificate],
so a registry configured with that certificate as ``rootcertbundle`` verifies
them.  The ``access`` claim grants only the intersection of what was asked and
what the user's rules in USERS.json allow.  A wrong password or an unknown
refresh token answers 401.

``--real-ttl N`` makes a token server that lies: its tokens claim ``--ttl``
seconds in ``expires_in`` but the registry refuses them about N seconds after
they were issued (their ``exp`` claim is set N - :data:`REGISTRY_LEEWAY` seconds
ahead, distribution accepting a token that long past its ``exp``).  Clients
then meet tokens that expire early, as with clock skew or revocation.

Every request is recorded (user, scopes asked, access granted — never a secret)
and listed by ``GET /_log``; ``DELETE /_log`` clears the record.  ``GET /_health``
answers 200 once the server runs.

USERS.json: ``{"users": {name: {"password": p, "access": [rule...]}}, "anonymous": [rule...]}``
with rules ``{"type": "repository", "name": "<fnmatch pattern>", "actions": [...]}``;
an action ``*`` in a rule allows every action.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import datetime
import fnmatch
import json
import logging
import secrets
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import serialization

log = logging.getLogger("token_server")

#: Seconds distribution 2.8 still accepts a token after its ``exp`` claim
#: (``token.Leeway``, for clock skew).
REGISTRY_LEEWAY = 60


@dataclass
class Rule:
    """One grant: resource type, fnmatch pattern on the name, allowed actions."""

    type: str
    name: str
    actions: frozenset[str]

    def allows(self, rtype: str, name: str) -> frozenset[str] | None:
        """Allowed actions on (rtype, name) under this rule; None if it does not apply."""
        if rtype != self.type or not fnmatch.fnmatchcase(name, self.name):
            return None
        return self.actions


@dataclass
class User:
    """A user: password and rules."""

    password: str = field(repr=False)
    rules: list[Rule]


def _rules(raw: list[dict[str, Any]]) -> list[Rule]:
    return [Rule(r["type"], r["name"], frozenset(r["actions"])) for r in raw]


def parse_scope(scope: str) -> tuple[str, str, list[str]] | None:
    """``repository:name:pull,push`` → (type, name, actions); None if malformed."""
    first = scope.find(":")
    last = scope.rfind(":")
    if first <= 0 or last <= first:
        return None
    rtype = scope[:first]
    if "(" in rtype:  # "repository(plugin)"
        rtype = rtype[: rtype.index("(")]
    name = scope[first + 1 : last]
    actions = [a for a in scope[last + 1 :].split(",") if a]
    if not name:
        return None
    return rtype, name, actions


def grant(rules: list[Rule], scopes: list[str]) -> list[dict[str, Any]]:
    """The ``access`` claim for ``scopes`` under ``rules`` (requested ∩ allowed)."""
    merged: dict[tuple[str, str], list[str]] = {}
    for scope in scopes:
        parsed = parse_scope(scope)
        if parsed is None:
            continue
        rtype, name, actions = parsed
        allowed: set[str] = set()
        for rule in rules:
            got = rule.allows(rtype, name)
            if got is not None:
                allowed |= got
        granted = merged.setdefault((rtype, name), [])
        for action in actions:
            if (action in allowed or "*" in allowed) and action not in granted:
                granted.append(action)
    return [
        {"type": rtype, "name": name, "actions": actions}
        for (rtype, name), actions in merged.items()
        if actions
    ]


class TokenServer:
    """State of the token server: users, signing key, refresh tokens, request log."""

    def __init__(
        self,
        *,
        key_pem: bytes,
        cert_pem: bytes,
        users: dict[str, User],
        anonymous: list[Rule],
        issuer: str,
        ttl: int,
        real_ttl: int | None = None,
    ) -> None:
        self.key = serialization.load_pem_private_key(key_pem, password=None)
        cert = x509.load_pem_x509_certificate(cert_pem)
        self.x5c = [base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()]
        self.users = users
        self.anonymous = anonymous
        self.issuer = issuer
        self.ttl = ttl
        #: Seconds until the registry refuses a token (None: ``ttl``, the truth).
        self.real_ttl = real_ttl
        self.refresh_tokens: dict[str, str] = {}
        self.requests: list[dict[str, Any]] = []

    def issue(self, user: str | None, service: str, access: list[dict[str, Any]]) -> str:
        """Sign a JWT for ``user`` with ``access``."""
        now = int(time.time())
        claims = {
            "iss": self.issuer,
            "sub": user or "",
            "aud": service,
            "exp": now + self._exp_offset(),
            "nbf": now - 10,
            "iat": now,
            "jti": uuid.uuid4().hex,
            "access": access,
        }
        return jwt.encode(
            claims,
            self.key,  # type: ignore[arg-type]
            algorithm="RS256",
            headers={"x5c": self.x5c},
        )

    def _exp_offset(self) -> int:
        """Seconds from now to the ``exp`` claim: ``ttl``, or the lie's real lifetime."""
        if self.real_ttl is None:
            return self.ttl
        return self.real_ttl - REGISTRY_LEEWAY

    def rules_for(self, user: str | None) -> list[Rule]:
        """Rules of ``user`` (the anonymous rules for None)."""
        if user is None:
            return self.anonymous
        return self.users[user].rules

    def check_password(self, username: str, password: str) -> bool:
        """True when ``username`` exists and ``password`` is its password."""
        user = self.users.get(username)
        return user is not None and secrets.compare_digest(user.password, password)

    def record(self, entry: dict[str, Any]) -> None:
        """Remember one request for ``/_log``."""
        entry["time"] = time.time()
        entry["seq"] = len(self.requests)
        self.requests.append(entry)
        log.info("token request %s", json.dumps(entry))

    def answer(
        self, user: str | None, service: str, scopes: list[str], *, refresh: bool
    ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """The JSON answer for a successful request and the access it granted."""
        access = grant(self.rules_for(user), scopes)
        token = self.issue(user, service, access)
        body: dict[str, Any] = {
            "token": token,
            "access_token": token,
            "expires_in": self.ttl,
            "issued_at": datetime.datetime.now(datetime.UTC).isoformat(),
        }
        if refresh and user is not None:
            rt = secrets.token_urlsafe(24)
            self.refresh_tokens[rt] = user
            body["refresh_token"] = rt
        return body, access


def _unauthorized(message: str) -> web.Response:
    return web.json_response(
        {"errors": [{"code": "UNAUTHORIZED", "message": message}]},
        status=401,
        headers={"WWW-Authenticate": 'Basic realm="replicator-test-token-server"'},
    )


def _basic_credentials(header: str | None) -> tuple[str, str] | str | None:
    """(user, password) from a Basic header; None if absent; "bad" if malformed."""
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic":
        return "bad"
    try:
        raw = base64.b64decode(value.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return "bad"
    user, sep, password = raw.partition(":")
    if not sep:
        return "bad"
    return user, password


async def handle_get_token(request: web.Request) -> web.Response:
    """GET /token: Basic or anonymous."""
    server: TokenServer = request.app["server"]
    service = request.query.get("service", "")
    # Several scope parameters, each possibly holding space-separated scopes.
    scopes = [s for value in request.query.getall("scope", []) for s in value.split()]
    offline = request.query.get("offline_token", "").lower() == "true"
    entry: dict[str, Any] = {
        "method": "GET",
        "grant_type": None,
        "user": None,
        "service": service,
        "scopes": scopes,
        "client_id": request.query.get("client_id"),
        "offline": offline,
    }
    creds = _basic_credentials(request.headers.get("Authorization"))
    if creds == "bad":
        entry.update(status=401, granted=[])
        server.record(entry)
        return _unauthorized("malformed Authorization header")
    user: str | None = None
    if isinstance(creds, tuple):
        user = creds[0]
        entry["user"] = user
        if not server.check_password(*creds):
            entry.update(status=401, granted=[])
            server.record(entry)
            return _unauthorized("invalid username or password")
    body, access = server.answer(user, service, scopes, refresh=offline)
    entry.update(status=200, granted=access)
    server.record(entry)
    return web.json_response(body)


async def handle_post_token(request: web.Request) -> web.Response:
    """POST /token: OAuth2 password and refresh_token grants."""
    server: TokenServer = request.app["server"]
    form = await request.post()
    grant_type = str(form.get("grant_type", ""))
    service = str(form.get("service", ""))
    scopes = str(form.get("scope", "")).split()
    offline = str(form.get("access_type", "")) == "offline"
    entry: dict[str, Any] = {
        "method": "POST",
        "grant_type": grant_type,
        "user": None,
        "service": service,
        "scopes": scopes,
        "client_id": form.get("client_id"),
        "offline": offline,
    }
    user: str | None
    if grant_type == "password":
        user = str(form.get("username", ""))
        entry["user"] = user
        if not server.check_password(user, str(form.get("password", ""))):
            entry.update(status=401, granted=[])
            server.record(entry)
            return _unauthorized("invalid username or password")
        refresh = True
    elif grant_type == "refresh_token":
        user = server.refresh_tokens.get(str(form.get("refresh_token", "")))
        entry["user"] = user
        if user is None:
            entry.update(status=401, granted=[])
            server.record(entry)
            return _unauthorized("unknown refresh token")
        refresh = offline
    else:
        entry.update(status=400, granted=[])
        server.record(entry)
        return web.json_response(
            {"error": "unsupported_grant_type", "error_description": grant_type[:40]},
            status=400,
        )
    body, access = server.answer(user, service, scopes, refresh=refresh)
    entry.update(status=200, granted=access)
    server.record(entry)
    return web.json_response(body)


async def handle_log(request: web.Request) -> web.Response:
    """GET /_log: every recorded request; DELETE /_log clears."""
    server: TokenServer = request.app["server"]
    if request.method == "DELETE":
        server.requests.clear()
        return web.Response(status=204)
    return web.json_response(server.requests)


async def handle_health(request: web.Request) -> web.Response:
    """GET /_health: the server runs."""
    return web.Response(text="ok")


def build_app(server: TokenServer) -> web.Application:
    """The aiohttp application around ``server``."""
    app = web.Application()
    app["server"] = server
    app.router.add_get("/token", handle_get_token)
    app.router.add_post("/token", handle_post_token)
    app.router.add_route("GET", "/_log", handle_log)
    app.router.add_route("DELETE", "/_log", handle_log)
    app.router.add_get("/_health", handle_health)
    return app


def load_server(
    key: Path,
    cert: Path,
    users_file: Path,
    *,
    issuer: str,
    ttl: int,
    real_ttl: int | None = None,
) -> TokenServer:
    """Build a TokenServer from the files given on the command line."""
    raw = json.loads(users_file.read_text())
    users = {
        name: User(password=spec["password"], rules=_rules(spec.get("access", [])))
        for name, spec in raw.get("users", {}).items()
    }
    return TokenServer(
        key_pem=key.read_bytes(),
        cert_pem=cert.read_bytes(),
        users=users,
        anonymous=_rules(raw.get("anonymous", [])),
        issuer=issuer,
        ttl=ttl,
        real_ttl=real_ttl,
    )


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point: serve until terminated."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--key", type=Path, required=True)
    parser.add_argument("--cert", type=Path, required=True)
    parser.add_argument("--users", type=Path, required=True)
    parser.add_argument("--issuer", default="replicator-test-token-server")
    parser.add_argument("--ttl", type=int, default=300, help="token lifetime in seconds")
    parser.add_argument(
        "--real-ttl",
        type=int,
        default=None,
        help="seconds until the registry refuses a token, whatever expires_in claims",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    server = load_server(
        args.key, args.cert, args.users, issuer=args.issuer, ttl=args.ttl, real_ttl=args.real_ttl
    )
    web.run_app(
        build_app(server),
        host=args.host,
        port=args.port,
        print=None,
        access_log=None,
        shutdown_timeout=1.0,
    )


if __name__ == "__main__":
    main()
