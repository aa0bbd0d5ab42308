"""Process-wide structured logging with secret redaction.

structlog loggers (``get_logger``) and the standard library ``logging`` module
(aiohttp, asyncio) write through the same handler on ``stderr``, rendered the
same way, either for humans (a TTY) or as JSON lines.  structlog events take a
short path: processed by structlog's chain, rendered and written by the handler
under its lock, without a ``logging.LogRecord`` (a stdlib record costs several
times the event itself); stdlib records go through the handler's
``ProcessorFormatter`` with the same processors.

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

Event names — the project's one naming style: ``area.event_name``.  The area
is dotted and says which part of the tool speaks (``cli``, ``run``,
``journal``, ``engine``, ``registry``, ``registry.upload``, ``auth``,
``credentials``, ``layout``, ``delete``, ``discover``, ``targets``...); the event
is snake_case, a past tense or a noun (``run.resumed``, ``run.stopping``,
``journal.set_aside``, ``registry.upload.session_expired``, ``cli.exited``).
What varies goes into fields, never into the name (``run.source_moved`` with
``source``, ``was``, ``now``); a message meant for the user travels in the
field ``message``.  Consumers of ``--log-format json`` match on these names.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import traceback
from types import FrameType
from typing import Any, Literal, TextIO

import structlog
from structlog.typing import EventDict, FilteringBoundLogger, Processor, WrappedLogger

from replicator.observe.redact import (
    _KEY_IS_SECRET,
    _SECRETS,
    MASK,
    MIN_SUBSTRING_SECRET,
    _is_secret_key,
    _redact,
    redact_text,
    redact_value,
    register_secret,
    registered_secret_count,
)

LogFormat = Literal["auto", "console", "json"]

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


class _ExceptionFormatter:
    """Turn ``exc_info`` into an ``exception`` string so it can be redacted.

    The traceback only with ``--debug`` (``tracebacks``); otherwise the
    exception's own line (``SSLCertVerificationError: ...``): a log line, like
    an error message, never carries a traceback the user did not ask for.
    """

    def __init__(self, *, tracebacks: bool) -> None:
        self.tracebacks = tracebacks

    def __call__(self, _logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
        exc_info = event_dict.pop("exc_info", None)
        if not exc_info:
            return event_dict
        if isinstance(exc_info, BaseException):
            exc_info = (type(exc_info), exc_info, exc_info.__traceback__)
        elif not isinstance(exc_info, tuple):
            exc_info = sys.exc_info()
        if exc_info[0] is not None:
            if self.tracebacks:
                text = "".join(traceback.format_exception(*exc_info))
            else:
                text = "".join(traceback.format_exception_only(exc_info[0], exc_info[1]))
            event_dict["exception"] = text.rstrip()
        return event_dict


def redact_event(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    """structlog processor: mask secrets in every value of ``event_dict``.

    Keys starting with ``_`` belong to structlog's stdlib bridge (the log
    record) and are left alone.
    """
    return _redact_items(event_dict, frozenset())


#: Keys whose values the processors before :func:`_redact_stamped_event` always set
#: themselves (``add_log_level``, ``TimeStamper``), overwriting whatever the caller
#: passed: a level name chosen by code (``info``, ``warning``...) or an ISO timestamp
#: (digits and ``-:.TZ``).  No secret pattern can match those (each needs a literal
#: such as ``token`` or ``://``), and a registered secret occurring in one is masked
#: by the pass over the rendered line (:class:`_RedactingRenderer`), where the value
#: stands verbatim (nothing in it needs escaping).
_STAMPED_KEYS = frozenset({"level", "timestamp"})


def _redact_stamped_event(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    """:func:`redact_event` for our chains, skipping the values in :data:`_STAMPED_KEYS`."""
    return _redact_items(event_dict, _STAMPED_KEYS)


def _redact_items(event_dict: EventDict, skip: frozenset[str]) -> EventDict:
    for key, value in list(event_dict.items()):
        if key.startswith("_") or key in skip:
            continue
        secret_key = _KEY_IS_SECRET.get(key)
        if secret_key is None:
            secret_key = _is_secret_key(key)
        if secret_key and value:
            event_dict[key] = MASK
        elif type(value) is str:  # the common case, as redact_value would do it
            event_dict[key] = redact_text(value)
        elif value is not None and type(value) not in _PLAIN_TYPES:
            event_dict[key] = redact_value(value)
    return event_dict


#: Types :func:`redact_value` returns unchanged (exactly these, not subclasses).
_PLAIN_TYPES = frozenset({int, float, bool})


class _RedactingRenderer:
    """Wrap a renderer and redact its output string once more (defence in depth).

    :func:`redact_event` has masked every value already, but not what only the
    rendered line shows: mapping keys, values under keys starting with ``_``, the
    ``repr`` a renderer gives to an object the dict pass let through (a subclass of
    ``int`` or ``float``), a secret-shaped run of text spanning two values.  This
    pass costs a few substring tests for an ordinary line.
    """

    def __init__(self, renderer: Processor) -> None:
        self._renderer = renderer

    def __call__(self, logger: WrappedLogger, method: str, event_dict: EventDict) -> str:
        rendered = self._renderer(logger, method, event_dict)
        if isinstance(rendered, bytes):
            rendered = rendered.decode("utf-8", "replace")
        # Not redact_text: lines are unique (timestamps), remembering them would only churn.
        return _redact(_SECRETS.state, str(rendered))


def _json_fallback(obj: Any) -> Any:
    """What JSON cannot encode: ``__structlog__()`` if it has one, else its ``repr``."""
    try:
        return obj.__structlog__()
    except AttributeError:
        return repr(obj)


#: ``json.dumps(event_dict, default=_json_fallback)``, without building an encoder per line.
_JSON_ENCODER = json.JSONEncoder(default=_json_fallback)


def _render_json(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> str:
    """structlog renderer: one JSON object (what ``structlog.processors.JSONRenderer`` gives)."""
    return _JSON_ENCODER.encode(event_dict)


_HANDLER_MARK = "_replicator_handler"


class _LogHandler(logging.StreamHandler[TextIO]):
    """The process's one log output: stdlib records through :meth:`emit` (and the
    ``ProcessorFormatter``), structlog events through :meth:`write_event`; both render
    with the same redacting renderer and write whole lines under the handler's lock.
    """

    def __init__(self, stream: TextIO, render: _RedactingRenderer) -> None:
        super().__init__(stream)
        self.render = render

    def write_event(self, logger: _EventWriter, method: str, event_dict: EventDict) -> None:
        """Render a processed structlog event and write it as one line.

        Errors are reported like a failing ``emit`` (``handleError``), never raised
        into the code that logs.
        """
        try:
            line = self.render(logger, method, event_dict) + self.terminator
            self.acquire()
            try:
                self.stream.write(line)
                self.stream.flush()
            finally:
                self.release()
        except RecursionError:
            raise
        except Exception:
            level = logging.getLevelName(method.upper())
            self.handleError(
                logging.LogRecord(
                    logger.name,
                    level if isinstance(level, int) else logging.INFO,
                    "",
                    0,
                    event_dict,
                    None,
                    None,
                )
            )


class _Output:
    """The handler configured last; the structlog path looks it up at every event."""

    handler: _LogHandler | None = None


_OUTPUT = _Output()


class _EventWriter:
    """The logger structlog's bound loggers wrap: it hands each processed event to the
    handler configured last, so a logger bound before a reconfiguration follows it
    (as a stdlib logger follows the root handlers).
    """

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def msg(self, method: str, event_dict: EventDict) -> None:
        handler = _OUTPUT.handler
        if handler is not None:
            handler.write_event(self, method, event_dict)

    log = debug = info = warn = warning = msg
    fatal = failure = err = error = critical = exception = msg


_WRITERS: dict[str, _EventWriter] = {}


def _caller_module() -> str:
    """The module name of the first caller outside structlog and this module."""
    frame: FrameType | None = sys._getframe(1)
    while frame is not None:
        module = str(frame.f_globals.get("__name__", "?"))
        if module != __name__ and module != "structlog" and not module.startswith("structlog."):
            return module
        frame = frame.f_back
    return "?"


def _writer_factory(*args: Any) -> _EventWriter:
    """structlog logger factory: the writer for the name given to ``get_logger``
    (or, without one, the calling module's name, as ``structlog.stdlib.LoggerFactory``)."""
    name = args[0] if args and isinstance(args[0], str) else _caller_module()
    writer = _WRITERS.get(name)
    if writer is None:
        writer = _EventWriter(name)
        if len(_WRITERS) < 1024:  # logger names are module names: a small set
            _WRITERS[name] = writer
    return writer


def _hand_over(
    _logger: WrappedLogger, method: str, event_dict: EventDict
) -> tuple[tuple[str, EventDict], dict[str, Any]]:
    """Last structlog processor: the arguments of :meth:`_EventWriter.msg`."""
    return (method, event_dict), {}


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
    otherwise.  The level is INFO, or DEBUG with ``debug``; logged exceptions
    carry their traceback only with ``debug``.  Every line, from structlog or
    stdlib loggers, passes the secret redaction.  Calling it again
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
        renderer = _render_json
    render = _RedactingRenderer(renderer)

    shared: list[Processor] = [
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        timestamper,
        structlog.processors.StackInfoRenderer(),
        _ExceptionFormatter(tracebacks=debug),
        _redact_stamped_event,
    ]

    # stdlib records (aiohttp, asyncio, warnings): LogRecord -> ProcessorFormatter.
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[structlog.stdlib.ExtraAdder(), *shared],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, render],
    )
    handler = _LogHandler(out, render)
    handler.setFormatter(formatter)
    setattr(handler, _HANDLER_MARK, True)

    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, _HANDLER_MARK, False):
            root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    logging.captureWarnings(True)
    _OUTPUT.handler = handler

    # structlog events: the same processors, then straight to the handler.
    structlog.configure(
        processors=[structlog.contextvars.merge_contextvars, *shared, _hand_over],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=_writer_factory,
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
