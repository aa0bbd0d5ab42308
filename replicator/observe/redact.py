"""Secret redaction: the registry of secrets the process learned, and masking of text and values.

Every value registered with :func:`register_secret` (passwords, tokens,
identity tokens) is replaced by ``***`` wherever it appears: in text, in any
value nested in dicts, lists and tuples.  Independent of registration,
well-known secret shapes are masked too: ``Authorization:`` header values,
``Bearer``/``Basic`` credentials, JWTs, URL user-info, query or form parameters
and JSON members named ``token``, ``access_token``, ``refresh_token`` or
``password``, and values under secret-looking keys.  Registered secrets shorter
than :data:`MIN_SUBSTRING_SECRET` characters are masked only where they stand as
a whole word.  :mod:`replicator.observe.logging` applies this to every log line;
error messages and reports use :func:`redact_text` directly.
"""

from __future__ import annotations

import base64
import binascii
import re
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any
from urllib.parse import quote, quote_plus

#: What every secret is replaced by.
MASK = "***"
#: Secrets at least this long are masked wherever they occur, shorter ones only as whole words.
MIN_SUBSTRING_SECRET = 4


_TOKEN_CHARS = r"[A-Za-z0-9._~+/=\-]+"
_SECRET_PARAM_NAMES = (
    r"(?:access_token|refresh_token|id_token|identity_token|identitytoken|token|password|passwd)"
)


def _looks_like_basic_credential(value: str) -> bool:
    """True when ``value`` is base64 of ``user:password`` (what a Basic header carries)."""
    try:
        decoded = base64.b64decode(value + "=" * (-len(value) % 4), validate=True)
    except (binascii.Error, ValueError):
        return False
    return b":" in decoded


def _looks_like_bearer_token(value: str) -> bool:
    """True for token-shaped words: long, or holding digits or token punctuation."""
    return len(value) >= 16 or any(c.isdigit() or c in "._-~+/=" for c in value)


def _mask_scheme_credential(match: re.Match[str]) -> str:
    scheme, space, value = match.group(1), match.group(2), match.group(3)
    if scheme.lower() == "basic":
        secret = _looks_like_basic_credential(value)
    else:
        secret = _looks_like_bearer_token(value)
    return f"{scheme}{space}{MASK}" if secret else match.group(0)


# Order matters: the header pattern swallows the whole value, so a later
# ``Bearer`` pattern never sees half of it.
_PATTERNS: tuple[tuple[re.Pattern[str], str | Callable[[re.Match[str]], str]], ...] = (
    # Authorization / Proxy-Authorization header values, up to end of line or a quote
    # (an escaped one too: in a rendered JSON line the value ends before `\"`, and
    # masking the backslash with it would leave an unescaped quote, invalid JSON).
    (
        re.compile(
            r"((?:proxy-)?authorization['\"]?\s*[:=]\s*['\"]?)(?:[^'\"\\\r\n,}]|\\(?!['\"]))+",
            re.IGNORECASE,
        ),
        rf"\1{MASK}",
    ),
    # Bearer / Basic credentials (but not challenge parameters such as `Bearer realm=`,
    # nor prose such as "Basic authentication": see _mask_scheme_credential).
    (
        re.compile(
            rf"\b(Bearer|Basic)(\s+)(?!(?:realm|scope|service|error|charset)\s*=)({_TOKEN_CHARS})",
            re.IGNORECASE,
        ),
        _mask_scheme_credential,
    ),
    # JWTs: header.payload.signature, each base64url; header and payload start with `{"`.
    (re.compile(r"eyJ[A-Za-z0-9_\-]+\.eyJ[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]*"), MASK),
    # URL user-info: scheme://user:password@ or scheme://token@ (but not the digest of
    # a reference such as ocidir://out:v1@sha256:...).
    (
        re.compile(
            r"([A-Za-z][A-Za-z0-9+.\-]*://)[^/\s@:]*(?::[^/\s@]*)?@"
            r"(?![a-z0-9]+(?:[+._-][a-z0-9]+)*:[a-fA-F0-9]{32,})"
        ),
        rf"\1{MASK}@",
    ),
    # Query string / form parameters.
    (
        re.compile(rf"((?:^|[?&;\s])(?:{_SECRET_PARAM_NAMES})=)[^&\s#'\";,]*", re.IGNORECASE),
        rf"\1{MASK}",
    ),
    # JSON members: "token": "...", 'password': '...'
    (
        re.compile(
            rf"""(["'](?:{_SECRET_PARAM_NAMES}|secret|auth)["']\s*:\s*)(["'])(?:\\.|(?!\2).)*\2""",
            re.IGNORECASE,
        ),
        rf"\1\2{MASK}\2",
    ),
)

#: Literals (ASCII, lower-case) one of which the text, lower-cased, must contain for each
#: pattern of :data:`_PATTERNS` (same order) to possibly match.  Every pattern holds
#: one of its literals verbatim (case-insensitively), so a pattern whose literals are all
#: absent cannot match and is skipped: :func:`redact_text` gives exactly the result of
#: applying every pattern, at the cost of a few substring tests for most strings.
_PATTERN_NEEDS: tuple[tuple[str, ...], ...] = (
    ("authorization",),
    ("bearer", "basic"),
    ("eyj",),
    ("://",),
    ("token", "passw"),  # ``=`` is checked too, see _needed_patterns
    ("token", "passw", "secret", "auth"),  # a quote is checked too
)

#: Every literal of :data:`_PATTERN_NEEDS`, or a part of it (``auth`` for
#: ``authorization``): when the lower-cased text holds none of them, no pattern can
#: match.  Most log values (digests, names, media types) are answered by these tests.
_ANY_NEEDED = ("auth", "bearer", "basic", "eyj", "://", "token", "passw", "secret")

#: Strings up to this long that :func:`redact_text` found clean are remembered (see
#: :class:`_SecretState`): log values repeat (event names, media types, destinations).
_CLEAN_MAX_LEN = 200
#: How many clean strings are remembered at most; the set is emptied when full.
_CLEAN_MAX = 2048

#: Keys (lower-case, ``-`` as ``_``) whose values are always masked in event dicts.
_SECRET_KEYS = frozenset(
    {
        "password",
        "passwd",
        "secret",
        "token",
        "access_token",
        "refresh_token",
        "id_token",
        "identity_token",
        "identitytoken",
        "registry_token",
        "authorization",
        "proxy_authorization",
        "auth",
        "cookie",
        "set_cookie",
    }
)


class _SecretState:
    """The registered secrets at one moment: the values, one regex matching any of them,
    and the strings :func:`redact_text` found clean against exactly these secrets.

    A registration replaces the whole state (one reference), so a string found clean
    before a secret was registered is never taken as clean after: its verdict went
    into the old state's set, which nobody reads any more.
    """

    __slots__ = ("clean", "regex", "values")

    def __init__(self, regex: re.Pattern[str] | None, values: tuple[str, ...]) -> None:
        self.regex = regex
        self.values = values
        self.clean: set[str] = set()


class _SecretRegistry:
    """The set of registered secret values and one compiled regex matching any of them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: set[str] = set()
        self.state = _SecretState(None, ())

    def add(self, value: str) -> None:
        if not value or value in self._values:
            return
        with self._lock:
            self._values.add(value)
            self.state = _SecretState(self._compile(self._values), tuple(self._values))

    def __len__(self) -> int:
        return len(self._values)

    @staticmethod
    def _compile(values: Iterable[str]) -> re.Pattern[str]:
        parts = []
        for value in sorted(values, key=len, reverse=True):
            escaped = re.escape(value)
            if len(value) >= MIN_SUBSTRING_SECRET:
                parts.append(escaped)
            else:
                parts.append(rf"(?<![A-Za-z0-9]){escaped}(?![A-Za-z0-9])")
        return re.compile("|".join(parts))

    def sub(self, text: str) -> str:
        return _sub_secrets(self.state, text)


def _sub_secrets(state: _SecretState, text: str) -> str:
    """``text`` with the secrets of ``state`` masked."""
    regex = state.regex
    if regex is None:
        return text
    # Every match is one of the values verbatim: when none occurs, nothing to do.
    for value in state.values:
        if value in text:
            return regex.sub(MASK, text)
    return text


_SECRETS = _SecretRegistry()


def register_secret(value: str | None) -> None:
    """Mask ``value`` in every log line written from now on by this process.

    Call it for every password, token and identity token the process learns,
    before anything might log it.  Empty values and ``None`` are ignored.
    """
    if not value:
        return
    _SECRETS.add(value)
    # The same value as it appears in a URL or a form body.
    for encoded in (quote(value, safe=""), quote_plus(value, safe="")):
        if encoded != value:
            _SECRETS.add(encoded)


def registered_secret_count() -> int:
    """How many distinct secrets are registered (for tests and diagnostics)."""
    return len(_SECRETS)


def _may_match(index: int, text: str, lower: str) -> bool:
    """False when pattern ``index`` of :data:`_PATTERNS` cannot match ASCII ``text``."""
    if index == 4 and "=" not in text:
        return False
    if index == 5 and '"' not in text and "'" not in text:
        return False
    return any(literal in lower for literal in _PATTERN_NEEDS[index])


def redact_text(text: str) -> str:
    """``text`` with every registered secret and every secret-shaped substring masked.

    Equivalent to applying the registered-secret regex, then every pattern of
    :data:`_PATTERNS` in turn; patterns that cannot match (see
    :data:`_PATTERN_NEEDS`) are skipped.  Non-ASCII text always takes every
    pattern: case-insensitive matching knows letters (such as the Kelvin sign)
    that ``str.lower`` does not fold to ASCII.

    Short strings found clean are remembered until the next registration (the
    result depends only on the text and the registered secrets).
    """
    state = _SECRETS.state
    if type(text) is not str or len(text) > _CLEAN_MAX_LEN:
        return _redact(state, text)
    clean = state.clean
    if text in clean:
        return text
    redacted = _redact(state, text)
    if redacted == text:
        if len(clean) >= _CLEAN_MAX:
            clean.clear()
        clean.add(text)
    return redacted


def _redact(state: _SecretState, text: str) -> str:
    """:func:`redact_text` against the secrets of ``state``, without remembering."""
    text = _sub_secrets(state, text)
    if not text.isascii():
        for pattern, replacement in _PATTERNS:
            text = pattern.sub(replacement, text)
        return text
    lower = text.lower()
    for literal in _ANY_NEEDED:
        if literal in lower:
            break
    else:
        return text
    for index, (pattern, replacement) in enumerate(_PATTERNS):
        if _may_match(index, text, lower):
            new = pattern.sub(replacement, text)
            if new != text:
                text = new
                lower = text.lower()
    return text


_KEY_IS_SECRET: dict[str, bool] = {}


def _is_secret_key(key: object) -> bool:
    if not isinstance(key, str):
        return False
    known = _KEY_IS_SECRET.get(key)
    if known is None:
        known = key.lower().replace("-", "_") in _SECRET_KEYS
        if len(_KEY_IS_SECRET) < 4096:  # keys are identifiers: a bounded, small set
            _KEY_IS_SECRET[key] = known
    return known


def redact_value(value: Any) -> Any:
    """A copy of ``value`` with secrets masked, recursing into containers.

    Strings are redacted; mappings, lists, tuples and sets are rebuilt with their
    items redacted and values under secret-looking keys replaced by ``***``;
    numbers, booleans and ``None`` pass unchanged; anything else is turned into
    its redacted ``repr`` so a renderer cannot leak it later.
    """
    if isinstance(value, str):
        return redact_text(value)
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, bytes | bytearray):
        return redact_text(bytes(value).decode("utf-8", "replace"))
    if isinstance(value, Mapping):
        return {k: (MASK if _is_secret_key(k) and v else redact_value(v)) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        items = [redact_value(v) for v in value]
        return items if not isinstance(value, tuple) else tuple(items)
    return redact_text(repr(value))
