"""``WWW-Authenticate`` challenges and token scopes: pure parsing, no I/O.

:func:`parse_www_authenticate` reads a header into its challenges
(:class:`Challenge`; RFC 9110 §11.6.1: several challenges per header, quoted
and unquoted values, token68 credentials), :func:`normalize_scopes` merges
token scopes into the canonical set that keys the token cache, and :class:`ChallengeRound` is the
state one request carries through the 401s it meets, so that re-authentication
is bounded per request.

Everything here is total: malformed input yields fewer or emptier results,
never an exception.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

_TOKEN_CHARS = frozenset(
    "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
)
_TOKEN68_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~+/")


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


@dataclass(slots=True)
class ChallengeRound:
    """The 401 challenges met by one request, as the authenticator sees them.

    The transport makes one per request and hands it to every
    ``on_challenge`` call for that request: a credential refused there is
    replaced by a fresh one once (``renewed``); refused again within the same
    request, it is an error.  Another request starts a round of its own, so
    tokens that expire or are revoked in the course of a long run are renewed
    as often as that happens.
    """

    #: A refused credential was replaced by a fresh one during this request.
    renewed: bool = False
