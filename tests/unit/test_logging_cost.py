"""The cheap structlog path keeps what the log pipeline guarantees.

structlog events are rendered and written by the handler directly (no stdlib
``LogRecord``); redact_text remembers clean strings.  These tests pin what that
must not change: redaction, reconfiguration, level filtering, error handling.
"""

from __future__ import annotations

import io
import json
import logging
import secrets

import pytest
import structlog

from replicator.observe.logging import (
    MASK,
    configure_logging,
    get_logger,
    redact_text,
    register_secret,
)
from tests.unit.test_logging import _lines, _restore_logging  # noqa: F401  (autouse fixture)


def test_structlog_events_make_no_log_record_but_stdlib_ones_still_do() -> None:
    buf = io.StringIO()
    configure_logging(fmt="json", stream=buf)
    made: list[str] = []
    factory = logging.getLogRecordFactory()

    def counting(*args: object, **kwargs: object) -> logging.LogRecord:
        record = factory(*args, **kwargs)
        made.append(record.name)
        return record

    logging.setLogRecordFactory(counting)
    try:
        get_logger("replicator.engine").info("copied", digest="4013506e034f", size=1)
        logging.getLogger("aiohttp.client").warning("stdlib %s", "record")
    finally:
        logging.setLogRecordFactory(factory)
    # (ProcessorFormatter makes a second, nameless record from the stdlib one.)
    assert "replicator.engine" not in made and "aiohttp.client" in made
    assert [line["event"] for line in _lines(buf)] == ["copied", "stdlib record"]


def test_json_line_keeps_its_key_order() -> None:
    buf = io.StringIO()
    configure_logging(fmt="json", stream=buf)
    get_logger("replicator.engine").info("copied", digest="d", size=3)
    (line,) = _lines(buf)
    assert list(line) == ["digest", "size", "event", "level", "logger", "timestamp"]
    assert str(line["timestamp"]).endswith("Z")


def test_clean_strings_are_not_remembered_past_a_registration() -> None:
    secret = f"later-{secrets.token_hex(8)}"
    text = f"connecting with {secret}"
    assert redact_text(text) == text  # found clean (and remembered) ...
    register_secret(secret)
    assert redact_text(text) == f"connecting with {MASK}"  # ... until a secret is registered


def test_logged_value_is_masked_after_a_late_registration() -> None:
    buf = io.StringIO()
    configure_logging(fmt="json", stream=buf)
    secret = f"late-{secrets.token_hex(8)}"
    log = get_logger("replicator.test")
    log.info("first", note=secret)
    register_secret(secret)
    log.info("second", note=secret)
    first, second = _lines(buf)
    assert first["note"] == secret
    assert second["note"] == MASK


def test_caller_cannot_smuggle_values_under_stamped_keys() -> None:
    buf = io.StringIO()
    configure_logging(fmt="json", stream=buf)
    secret = f"stamp-{secrets.token_hex(8)}"
    register_secret(secret)
    get_logger("replicator.test").info("x", level=secret, timestamp=f"Bearer {secret}")
    assert secret not in buf.getvalue()
    (line,) = _lines(buf)
    assert line["level"] == "info"


def test_logger_bound_before_a_reconfiguration_follows_it() -> None:
    first, second = io.StringIO(), io.StringIO()
    configure_logging(fmt="json", stream=first)
    bound = structlog.get_logger("replicator.engine").bind(run=1)
    configure_logging(fmt="console", stream=second)
    bound.info("after")
    assert first.getvalue() == ""
    text = second.getvalue()
    assert "after" in text and "run=1" in text
    with pytest.raises(json.JSONDecodeError):
        json.loads(text.splitlines()[0])


def test_filtered_out_events_are_never_rendered() -> None:
    buf = io.StringIO()
    configure_logging(debug=False, fmt="json", stream=buf)
    rendered: list[int] = []

    class Costly:
        def __repr__(self) -> str:
            rendered.append(1)
            return "Costly()"

    get_logger("replicator.test").debug("hidden", obj=Costly())
    assert rendered == [] and buf.getvalue() == ""


def test_a_failing_stream_does_not_raise_into_the_caller(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    buf = io.StringIO()
    configure_logging(fmt="json", stream=buf)
    buf.close()
    monkeypatch.setattr(logging, "raiseExceptions", False)
    get_logger("replicator.test").info("into a closed stream")
    logging.getLogger("aiohttp.client").warning("stdlib into a closed stream")


def test_logger_without_a_name_is_named_after_its_module() -> None:
    buf = io.StringIO()
    configure_logging(fmt="json", stream=buf)
    structlog.get_logger().info("anonymous")
    (line,) = _lines(buf)
    assert line["logger"] == __name__
