"""The log pipeline masks secrets everywhere a line can carry them."""

from __future__ import annotations

import io
import json
import logging
import random
import secrets
from collections.abc import Iterator

import pytest
import structlog

import replicator.observe.redact as logging_mod
from replicator.observe.logging import (
    MASK,
    configure_logging,
    get_logger,
    redact_text,
    redact_value,
    register_secret,
)


def _fresh_secret(prefix: str = "s3cr3t") -> str:
    value = f"{prefix}-{secrets.token_hex(8)}"
    register_secret(value)
    return value


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """Leave the process-wide logging as other tests expect it."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)
    structlog.reset_defaults()


@pytest.fixture
def json_log() -> io.StringIO:
    buf = io.StringIO()
    configure_logging(debug=True, fmt="json", stream=buf)
    return buf


def _lines(buf: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in buf.getvalue().splitlines() if line.strip()]


def test_registered_secret_is_masked_in_text() -> None:
    secret = _fresh_secret()
    assert redact_text(f"password is {secret}!") == f"password is {MASK}!"


def test_registered_secret_is_masked_url_encoded() -> None:
    secret = _fresh_secret("p@ss word/")
    encoded = "p%40ss%20word%2F" + secret.split("/", 1)[1]
    assert secret not in redact_text(f"form {secret}")
    assert encoded not in redact_text(f"body=x&pw={encoded}")


def test_short_secret_is_masked_only_as_whole_word() -> None:
    register_secret("q7z")
    assert redact_text("user q7z logged in") == f"user {MASK} logged in"
    assert redact_text("sha256:aq7zb") == "sha256:aq7zb"


@pytest.mark.parametrize(
    ("text", "leak"),
    [
        ("Authorization: Bearer abc.def-ghi", "abc.def-ghi"),
        ("authorization=Basic dXNlcjpwYXNzd29yZA==", "dXNlcjpwYXNzd29yZA=="),
        ("sent Bearer tok_ABC123 to host", "tok_ABC123"),
        ("header Basic dXNlcjpwYXNz", "dXNlcjpwYXNz"),
        ("jwt eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl end", "eyJzdWIiOiJ4In0"),
        ("GET https://alice:wonderland@registry.example/v2/", "wonderland"),
        ("GET https://registry.example/token?service=r&token=abc123&x=1", "abc123"),
        ("POST body grant_type=password&password=hunter22&username=bob", "hunter22"),
        ("refresh_token=rt-9999&access_token=at-8888", "rt-9999"),
        ('{"token": "zzz-token-zzz", "expires_in": 60}', "zzz-token-zzz"),
        ("{'access_token': 'aaa-tok'}", "aaa-tok"),
    ],
)
def test_secret_shapes_are_masked(text: str, leak: str) -> None:
    redacted = redact_text(text)
    assert leak not in redacted
    assert MASK in redacted


def test_challenge_parameters_stay_readable() -> None:
    challenge = 'Bearer realm="https://auth.example/token",service="registry",scope="x"'
    assert redact_text(challenge) == challenge
    assert redact_text('Basic realm="Registry Realm"') == 'Basic realm="Registry Realm"'


@pytest.mark.parametrize(
    "text",
    [
        "copied sha256:0123456789abcdef to 127.0.0.1:5000/library/alpine:3.19 (12 blobs)",
        "the registry requires Basic authentication",
        "Bearer token expired, asking for a fresh one",
        'Basic realm="Registry Realm"',
        "wrote ocidir://out:v1@sha256:" + "ab" * 32,
        "read ocidir://layout@sha512:" + "cd" * 64,
        "token server http://127.0.0.1:5001/token?service=registry&scope=repository:a:pull",
    ],
)
def test_ordinary_text_is_unchanged(text: str) -> None:
    assert redact_text(text) == text


def _every_pattern(text: str) -> str:
    """The reference redaction: the secrets regex, then every pattern, none skipped."""
    text = logging_mod._SECRETS.sub(text)
    for pattern, replacement in logging_mod._PATTERNS:
        text = pattern.sub(replacement, text)
    return text


_PIECES = (
    "Authorization",
    "authorization: ",
    "Proxy-Authorization=",
    "AUTHORIZATION",
    "Bearer ",
    "bearer",
    "Basic ",
    "BASIC",
    "dXNlcjpwYXNz",
    "eyJhbGciOiJI",
    "eyJzdWIi",
    "EYJ",
    ".",
    "-",
    "_",
    "://",
    "https",
    "@",
    ":",
    "/",
    "?",
    "&",
    ";",
    " ",
    "=",
    "token",
    "TOKEN",
    "access_token",
    "password",
    "Passwd",
    "secret",
    "auth",
    '"',
    "'",
    ": ",
    "sha256:",
    '"auth": "',
    "'secret':'",
    '"Password" : "',
    "?token=",
    "&passwd=",
    "ab12",
    "x",
    "\\",
    "\n",
    "\u212a",
    "\u0131",
    "q7z",
    "realm=",
    "}",
    ",",
)


def test_skipping_patterns_never_changes_the_result() -> None:
    """redact_text's fast paths give exactly what applying every pattern gives."""
    register_secret("q7z")
    _fresh_secret()
    rng = random.Random(20261128)
    samples = [
        "".join(rng.choice(_PIECES) for _ in range(rng.randint(1, 12))) for _ in range(20000)
    ]
    for text in samples:
        assert redact_text(text) == _every_pattern(text), text


def test_pattern_literals_cover_every_pattern() -> None:
    assert len(logging_mod._PATTERN_NEEDS) == len(logging_mod._PATTERNS)


def test_nested_values_are_masked() -> None:
    secret = _fresh_secret()
    value = {
        "headers": {"Authorization": "Basic abc", "Accept": "application/json"},
        "items": [secret, ("x", secret)],
        "password": "anything",
        "count": 3,
    }
    out = redact_value(value)
    assert out["headers"]["Authorization"] == MASK
    assert out["headers"]["Accept"] == "application/json"
    assert out["items"] == [MASK, ("x", MASK)]
    assert out["password"] == MASK
    assert out["count"] == 3


def test_structlog_event_and_values_are_masked(json_log: io.StringIO) -> None:
    secret = _fresh_secret()
    log = get_logger("replicator.test")
    log.info(f"logging in with {secret}", token=secret, detail={"deep": [secret]}, n=1)
    (line,) = _lines(json_log)
    raw = json_log.getvalue()
    assert secret not in raw
    assert line["event"] == f"logging in with {MASK}"
    assert line["token"] == MASK
    assert line["detail"] == {"deep": [MASK]}
    assert line["n"] == 1
    assert line["level"] == "info"
    assert line["logger"] == "replicator.test"


def test_exception_text_is_masked(json_log: io.StringIO) -> None:
    secret = _fresh_secret()
    log = get_logger("replicator.test")
    try:
        raise RuntimeError(f"server said {secret}")
    except RuntimeError:
        log.exception("request failed")
    raw = json_log.getvalue()
    assert secret not in raw
    (line,) = _lines(json_log)
    assert "RuntimeError: server said ***" in str(line["exception"])


def _log_a_failure(debug: bool) -> dict[str, object]:
    buf = io.StringIO()
    configure_logging(debug=debug, fmt="json", stream=buf)
    try:
        raise ConnectionResetError("peer went away")
    except ConnectionResetError:
        logging.getLogger("asyncio").error("callback failed", exc_info=True)
    (line,) = _lines(buf)
    return line


def test_a_logged_exception_carries_its_traceback_only_with_debug() -> None:
    quiet = _log_a_failure(debug=False)
    assert quiet["exception"] == "ConnectionResetError: peer went away"
    loud = _log_a_failure(debug=True)
    assert str(loud["exception"]).startswith("Traceback (most recent call last):")
    assert str(loud["exception"]).endswith("ConnectionResetError: peer went away")


def test_stdlib_logging_goes_through_redaction(json_log: io.StringIO) -> None:
    secret = _fresh_secret()
    logging.getLogger("aiohttp.client").warning("headers %s", {"Authorization": f"Bearer {secret}"})
    raw = json_log.getvalue()
    assert secret not in raw
    (line,) = _lines(json_log)
    assert line["logger"] == "aiohttp.client"
    assert line["level"] == "warning"


def test_unknown_objects_are_rendered_redacted(json_log: io.StringIO) -> None:
    secret = _fresh_secret()

    class Leaky:
        def __repr__(self) -> str:
            return f"Leaky({secret})"

    get_logger("replicator.test").info("object", obj=Leaky())
    assert secret not in json_log.getvalue()
    assert "Leaky(***)" in json_log.getvalue()


def test_info_level_hides_debug() -> None:
    buf = io.StringIO()
    configure_logging(debug=False, fmt="json", stream=buf)
    log = get_logger("replicator.test")
    log.debug("hidden")
    logging.getLogger("aiohttp.client").debug("hidden too")
    log.info("shown")
    assert [line["event"] for line in _lines(buf)] == ["shown"]


def test_console_format_masks_too() -> None:
    buf = io.StringIO()
    configure_logging(debug=False, fmt="console", stream=buf)
    secret = _fresh_secret()
    get_logger("replicator.test").info("hello", password=secret, note=f"x {secret}")
    text = buf.getvalue()
    assert "hello" in text
    assert secret not in text
    with pytest.raises(json.JSONDecodeError):
        json.loads(text.splitlines()[0])


def test_auto_format_is_json_when_not_a_tty() -> None:
    buf = io.StringIO()
    configure_logging(debug=False, fmt="auto", stream=buf)
    get_logger("replicator.test").info("machine readable", k="v")
    (line,) = _lines(buf)
    assert line["k"] == "v"


def test_reconfiguring_does_not_duplicate_lines() -> None:
    first, second = io.StringIO(), io.StringIO()
    configure_logging(fmt="json", stream=first)
    configure_logging(fmt="json", stream=second)
    logging.getLogger("aiohttp.client").warning("once")
    assert first.getvalue() == ""
    assert len(_lines(second)) == 1


def test_a_masked_header_value_before_a_quote_keeps_the_json_line_valid(
    json_log: io.StringIO,
) -> None:
    log = get_logger("t")
    log.info('header Authorization: Bearer abc123token" and more')
    log.info("h", header='Proxy-Authorization: Basic dXNlcjpwYXNz\\tail" rest')
    logging.getLogger("aiohttp.client").warning('Authorization: Bearer qwe789" quoted')
    lines = _lines(json_log)  # every line parses
    text = json_log.getvalue()
    for leak in ("abc123token", "dXNlcjpwYXNz", "tail", "qwe789"):
        assert leak not in text, leak
    assert lines[0]["event"] == f'header Authorization: {MASK}" and more'
    assert lines[1]["header"] == f'Proxy-Authorization: {MASK}" rest'
