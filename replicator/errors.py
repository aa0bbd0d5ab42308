"""The replicator exception hierarchy.

Every error the tool raises on purpose derives from :class:`ReplicatorError`.
The CLI turns each into one line on stderr and the exit code in
:attr:`ReplicatorError.exit_code`; a traceback is shown only with ``--debug``.

Tree and exit codes (documented in the README too)::

    ReplicatorError                     1  generic failure
    ├── UsageError                      2  bad command line
    │   ├── ReferenceError              2  malformed reference
    │   └── ConfigError                 2  malformed configuration / job file
    ├── InputError                      2  malformed local input (files, manifests given by the user)
    ├── RegistryError                   7  a registry answered with an error
    │   ├── NotFoundError               3  manifest, tag, blob or repository unknown
    │   ├── AuthenticationError         4  credentials missing or wrong (401)
    │   ├── DeniedError                 4  authenticated but not allowed (403 / DENIED)
    │   ├── RateLimitedError            7  429 after all retries
    │   ├── ServerError                 7  5xx after all retries
    │   └── ProtocolError               7  an answer that breaks the protocol (hostile or broken registry)
    ├── ConnectionFailedError           5  DNS, refused connection, timeouts
    │   └── TLSError                    5  certificate did not verify
    ├── IntegrityError                  6  digest or size mismatch
    ├── UnsafePathError                 6  a pull would write outside its output directory
    ├── LayoutError                     7  an OCI image layout on disk is malformed
    ├── JournalError                    8  the resume journal cannot be used
    ├── IncompleteCopyError             9  a copy finished but something selected is missing
    ├── GateRefusedError               10  a promotion gate refused a graph (a required referrer is missing)
    ├── LockedError                    11  another process runs the same job or run (file lock beside the journal)
    └── Interrupted                    75  stopped by SIGTERM/SIGINT; rerun to resume

Errors raised while copying carry ``side`` ("source" or "destination") so the
message says which end failed.  No message ever contains a credential: the
constructors accept only what is safe to show (registry host, repository,
status, OCI error code, the registry's own message cut to a sane length).
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_NOT_FOUND = 3
EXIT_AUTH = 4
EXIT_NETWORK = 5
EXIT_INTEGRITY = 6
EXIT_REGISTRY = 7
EXIT_JOURNAL = 8
EXIT_INCOMPLETE = 9
EXIT_REFUSED = 10
EXIT_LOCKED = 11
EXIT_INTERRUPTED = 75

_MAX_DETAIL = 300


def _clip(text: str, limit: int = _MAX_DETAIL) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


class ReplicatorError(Exception):
    """Base of every error replicator raises on purpose.

    ``details``: further lines shown under the one-line message (each problem
    of a configuration file, say), empty for most errors.
    """

    exit_code: int = EXIT_FAILURE
    details: tuple[str, ...] = ()

    def __init__(self, message: str, *, side: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.side = side

    def with_side(self, side: str) -> ReplicatorError:
        """Return this error marked as coming from ``side`` ("source"/"destination")."""
        self.side = side
        return self

    def __str__(self) -> str:
        if self.side:
            return f"{self.side}: {self.message}"
        return self.message


class UsageError(ReplicatorError):
    """The command line cannot be acted on."""

    exit_code = EXIT_USAGE


class ReferenceError(UsageError):  # shadows the builtin on purpose: the clearest name
    """A reference (``host/repo:tag@digest`` or ``ocidir://...``) is malformed."""


class ConfigError(UsageError):
    """A configuration or job file is malformed."""


class InputError(ReplicatorError):
    """Local input given by the user (a file, an annotation file) is unusable."""

    exit_code = EXIT_USAGE


class RegistryError(ReplicatorError):
    """A registry answered with an error.

    ``status`` is the HTTP status, ``code`` the first OCI error code of the body
    (``MANIFEST_UNKNOWN``...), ``registry`` and ``repository`` say where.
    """

    exit_code = EXIT_REGISTRY

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        registry: str | None = None,
        repository: str | None = None,
        side: str | None = None,
    ) -> None:
        super().__init__(_clip(message), side=side)
        self.status = status
        self.code = code
        self.registry = registry
        self.repository = repository


class NotFoundError(RegistryError):
    """The manifest, tag, blob, upload or repository does not exist."""

    exit_code = EXIT_NOT_FOUND


class AuthenticationError(RegistryError):
    """Credentials are missing or were rejected (HTTP 401)."""

    exit_code = EXIT_AUTH


class DeniedError(RegistryError):
    """The credentials are valid but lack the right for this action (403 / DENIED)."""

    exit_code = EXIT_AUTH


class RateLimitedError(RegistryError):
    """The registry kept answering 429 after every retry."""


class ServerError(RegistryError):
    """The registry kept failing with 5xx after every retry."""


class ProtocolError(RegistryError):
    """An answer that breaks the distribution protocol (missing headers, bad JSON...)."""


class ConnectionFailedError(ReplicatorError):
    """The host could not be reached: DNS failure, refused connection, time-out."""

    exit_code = EXIT_NETWORK


class TLSError(ConnectionFailedError):
    """The server's TLS certificate did not verify."""


class IntegrityError(ReplicatorError):
    """Content did not match its digest or size; nothing was committed for it."""

    exit_code = EXIT_INTEGRITY


class UnsafePathError(ReplicatorError):
    """A pull would have written outside its output directory (or a device file)."""

    exit_code = EXIT_INTEGRITY


class LayoutError(ReplicatorError):
    """An OCI image layout on disk is malformed."""

    exit_code = EXIT_REGISTRY


class JournalError(ReplicatorError):
    """The resume journal cannot be opened or written."""

    exit_code = EXIT_JOURNAL


class IncompleteCopyError(ReplicatorError):
    """The copy ended but some selected node is not present at some destination."""

    exit_code = EXIT_INCOMPLETE


class Interrupted(ReplicatorError):
    """The run was stopped by a signal; the journal is flushed and a rerun resumes."""

    exit_code = EXIT_INTERRUPTED


class GateRefusedError(ReplicatorError):
    """A promotion gate refused a graph: a referrer of a required type is missing at the source."""

    exit_code = EXIT_REFUSED


class LockedError(ReplicatorError):
    """Another process holds the lock of a sync job or of a journal run: nothing was done for it.

    Raised when ``--wait-lock`` is not given (or its time ran out); the message
    names the process that holds the lock (pid, host, since when, its command).
    """

    exit_code = EXIT_LOCKED
