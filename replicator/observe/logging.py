"""Process-wide structured logging with secret redaction.

One pipeline serves both structlog loggers (``get_logger``) and the standard
library ``logging`` module (aiohttp, asyncio): both end in the same handler on
``stderr``, rendered either for humans (a TTY) or as JSON lines.

Guarantees:

* Every value registered with :func:`register_secret` (passwords, tokens,
  identity tokens) is replaced by ``***`` wherever it appears in a log line:
  in the event text, in any bound value, nested in dicts, lists and tuples, in
  formatted exceptions, and in records coming from the stdlib ``logging``.
* Independent of registration, well-known secret shapes are masked too:
  ``Authorization:`` header values, ``Bearer``/``Basic`` credentials, JWTs,
  URL user-info (``https://user:pass@host``), query or form parameters named
  ``token``, ``access_token``, ``refresh_token`` or ``password``, JSON members
  with those names, and bound values under secret-looking keys.
* The rendered line passes the redaction once more before it is written, so a
  renderer that stringifies an unknown object cannot leak a registered secret.

Registered secrets shorter than :data:`MIN_SUBSTRING_SECRET` characters are
masked only where they stand as a whole word: masking every occurrence of a
two-letter password inside digests would make the logs useless without
protecting anything.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import re
import sys
import threading
import traceback
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal, TextIO
from urllib.parse import quote, quote_plus

import structlog
from structlog.typing import EventDict, FilteringBoundLogger, Processor, WrappedLogger

__all__ = [
    "MASK",
    "MIN_SUBSTRING_SECRET",
    "LogFormat",
    "configure_logging",
    "get_logger",
    "redact_event",
    "redact_text",
    "redact_value",
    "register_secret",
    "registered_secret_count",
]

#: What every secret is replaced by.
MASK = "***"
#: Secrets at least this long are masked wherever they occur, shorter ones only as whole words.
MIN_SUBSTRING_SECRET = 4

LogFormat = Literal["auto", "console", "json"]

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
    # Authorization / Proxy-Authorization header values, up to end of line or a quote.
    (
        re.compile(r"((?:proxy-)?authorization['\"]?\s*[:=]\s*['\"]?)[^'\"\r\n,}]+", re.IGNORECASE),
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

#: Matches when any pattern might apply (a superset of the literals above): most log
#: values (digests, names, numbers as text, media types) are answered by this one search.
_MIGHT_HOLD_SECRET = re.compile(r"""authorization|bearer|basic|eyj|://|[='"]""", re.IGNORECASE)

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


class _SecretRegistry:
    """The set of registered secret values and one compiled regex matching any of them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: set[str] = set()
        # The regex and the values it was built from, swapped together (one reference).
        self._state: tuple[re.Pattern[str], tuple[str, ...]] | None = None

    def add(self, value: str) -> None:
        if not value or value in self._values:
            return
        with self._lock:
            self._values.add(value)
            self._state = (self._compile(self._values), tuple(self._values))

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
        state = self._state
        if state is None:
            return text
        regex, values = state
        # Every match is one of the values verbatim: when none occurs, nothing to do.
        for value in values:
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
    """
    text = _SECRETS.sub(text)
    if not text.isascii():
        for pattern, replacement in _PATTERNS:
            text = pattern.sub(replacement, text)
        return text
    if _MIGHT_HOLD_SECRET.search(text) is None:
        return text
    lower = text.lower()
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
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, bytes | bytearray):
        return redact_text(bytes(value).decode("utf-8", "replace"))
    if isinstance(value, Mapping):
        return {k: (MASK if _is_secret_key(k) and v else redact_value(v)) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        items = [redact_value(v) for v in value]
        return items if not isinstance(value, tuple) else tuple(items)
    return redact_text(repr(value))


def _format_exception(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    """Turn ``exc_info`` into an ``exception`` string so it can be redacted."""
    exc_info = event_dict.pop("exc_info", None)
    if not exc_info:
        return event_dict
    if isinstance(exc_info, BaseException):
        exc_info = (type(exc_info), exc_info, exc_info.__traceback__)
    elif not isinstance(exc_info, tuple):
        exc_info = sys.exc_info()
    if exc_info[0] is not None:
        event_dict["exception"] = "".join(traceback.format_exception(*exc_info)).rstrip()
    return event_dict


def redact_event(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    """structlog processor: mask secrets in every value of ``event_dict``.

    Keys starting with ``_`` belong to structlog's stdlib bridge (the log
    record) and are left alone; they are never rendered.
    """
    for key, value in list(event_dict.items()):
        if key.startswith("_"):
            continue
        if _is_secret_key(key) and value:
            event_dict[key] = MASK
        else:
            event_dict[key] = redact_value(value)
    return event_dict


class _RedactingRenderer:
    """Wrap a renderer and redact its output string once more (defence in depth)."""

    def __init__(self, renderer: Processor) -> None:
        self._renderer = renderer

    def __call__(self, logger: WrappedLogger, method: str, event_dict: EventDict) -> str:
        rendered = self._renderer(logger, method, event_dict)
        if isinstance(rendered, bytes):
            rendered = rendered.decode("utf-8", "replace")
        return redact_text(str(rendered))


_HANDLER_MARK = "_replicator_handler"


def _wants_console(fmt: LogFormat, stream: TextIO) -> bool:
    if fmt == "console":
        return True
    if fmt == "json":
        return False
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def configure_logging(
    *, debug: bool = False, fmt: LogFormat = "auto", stream: TextIO | None = None
) -> None:
    """Configure structlog and the stdlib ``logging`` for the whole process.

    ``fmt`` "auto" renders for humans when ``stream`` is a TTY and JSON lines
    otherwise.  The level is INFO, or DEBUG with ``debug``.  Every line, from
    structlog or stdlib loggers, passes the secret redaction.  Calling it again
    replaces the previous configuration (tests do).
    """
    out = stream if stream is not None else sys.stderr
    level = logging.DEBUG if debug else logging.INFO
    console = _wants_console(fmt, out)

    timestamper = structlog.processors.TimeStamper(fmt="iso", utc=True)
    renderer: Processor
    if console:
        colors = _isatty(out) and not os.environ.get("NO_COLOR")
        renderer = structlog.dev.ConsoleRenderer(
            colors=colors, exception_formatter=structlog.dev.plain_traceback
        )
    else:
        renderer = structlog.processors.JSONRenderer(sort_keys=False)

    shared: list[Processor] = [
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        timestamper,
        structlog.processors.StackInfoRenderer(),
        _format_exception,
        redact_event,
    ]

    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[structlog.stdlib.ExtraAdder(), *shared],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            _RedactingRenderer(renderer),
        ],
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(formatter)
    setattr(handler, _HANDLER_MARK, True)

    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, _HANDLER_MARK, False):
            root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    logging.captureWarnings(True)

    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.stdlib.LoggerFactory(),
        context_class=dict,
        cache_logger_on_first_use=False,
    )


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def get_logger(name: str) -> FilteringBoundLogger:
    """A structlog logger named ``name`` (use the module's ``__name__``).

    Safe to call at import time: the logger picks up the configuration in
    force when it first logs.
    """
    logger: FilteringBoundLogger = structlog.get_logger(name)
    return logger
