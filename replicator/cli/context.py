"""What every command gets besides its own arguments: targets, options, output.

:class:`CliContext` is built once per process from the global flags.  Its
:class:`~replicator.sync.targets.TargetPool` (the run layer's) hands out one
:class:`~replicator.targets.base.Target` per location (registry host or layout
directory), with the connection settings of :meth:`CliContext.registry_options`,
so that a command naming the same registry twice shares its connections and
tokens; main closes them all at the end of the run.

Credential flags (``--username``, ``--password``, ``--password-stdin``) apply to
*every* registry host named on the command line; a host for which no flag is
given still finds its credentials in the environment or the Docker config
(see :func:`~replicator.targets.registry.credentials.resolve_credentials`).
To copy between two registries that need different accounts, log in to each
with ``replicator login`` and leave the flags out.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass, field
from typing import TextIO

from replicator.errors import InputError, UsageError
from replicator.observe.logging import get_logger, register_secret
from replicator.oci.reference import Reference
from replicator.sync.targets import TargetPool
from replicator.targets.base import Target
from replicator.targets.registry.options import Credentials, RegistryOptions

log = get_logger(__name__)


def _stream_isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def read_password_stdin(stdin: TextIO) -> str:
    """The password piped on stdin, without its trailing line break.

    Raises :class:`UsageError` when stdin is a terminal (nothing piped) or empty.
    """
    if _stream_isatty(stdin):
        raise UsageError("--password-stdin needs the password piped on standard input")
    value = stdin.read()
    value = value.rstrip("\r\n")
    if not value:
        raise UsageError("--password-stdin: standard input was empty")
    return value


@dataclass
class CliContext:
    """Shared state of one CLI invocation.

    ``out`` receives command results (stdout); logs and messages go to ``err``
    (stderr).  ``is_tty`` says whether ``out`` is a terminal, so commands can
    choose between human and machine output.  ``json_logs``: ``--log-format
    json`` was given, so every stderr line must be a JSON log event (commands
    log their messages instead of writing lines).  Targets opened through
    :meth:`open_target` (or ``targets``) are shared per ``ref.location`` and
    closed by :meth:`aclose`.
    """

    username: str | None = None
    password: str | None = field(default=None, repr=False)
    insecure: bool = False
    plain_http: bool = False
    ca_file: str | None = None
    #: --connect-timeout, --timeout, --retry-deadline (None: the options' defaults).
    connect_timeout: float | None = None
    read_timeout: float | None = None
    retry_deadline: float | None = None
    debug: bool = False
    out: TextIO = field(default_factory=lambda: sys.stdout)
    is_tty: bool = False
    json_logs: bool = False
    err: TextIO = field(default_factory=lambda: sys.stderr)
    targets: TargetPool = field(init=False, repr=False)
    _options: dict[str, RegistryOptions] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.targets = TargetPool(self.registry_options)
        if self.password:
            register_secret(self.password)
        if self.ca_file is not None:
            path = os.path.expanduser(self.ca_file)
            if not os.path.isfile(path):
                raise InputError(f"--ca-file {self.ca_file}: no such file")
            self.ca_file = path

    @classmethod
    def from_args(
        cls,
        args: argparse.Namespace,
        *,
        out: TextIO | None = None,
        stdin: TextIO | None = None,
    ) -> CliContext:
        """Build the context from the parsed global flags.

        Reads the password from ``stdin`` when ``--password-stdin`` was given.
        Raises :class:`UsageError` for contradictory flags and
        :class:`InputError` for a CA file that does not exist.
        """
        stream = out if out is not None else sys.stdout
        password: str | None = getattr(args, "password", None)
        if getattr(args, "password_stdin", False):
            if password is not None:
                raise UsageError("--password and --password-stdin cannot be used together")
            password = read_password_stdin(stdin if stdin is not None else sys.stdin)
        elif password is not None:
            register_secret(password)
            log.debug("cli.password_on_command_line", hint="prefer --password-stdin")
        return cls(
            username=getattr(args, "username", None),
            password=password,
            insecure=bool(getattr(args, "insecure", False)),
            plain_http=bool(getattr(args, "plain_http", False)),
            ca_file=getattr(args, "ca_file", None),
            connect_timeout=getattr(args, "connect_timeout", None),
            read_timeout=getattr(args, "timeout", None),
            retry_deadline=getattr(args, "retry_deadline", None),
            debug=bool(getattr(args, "debug", False)),
            out=stream,
            is_tty=_stream_isatty(stream),
            json_logs=getattr(args, "log_format", "auto") == "json",
        )

    def credentials(self, host: str) -> Credentials | None:
        """Credentials for ``host``: the flags, else the environment, else the Docker config.

        Every secret found is registered with the log redaction.
        """
        from replicator.targets.registry.credentials import resolve_credentials

        creds = resolve_credentials(host, username=self.username, password=self.password)
        if creds is not None:
            for secret in creds.secrets():
                register_secret(secret)
        return creds

    def registry_options(self, host: str) -> RegistryOptions:
        """Connection settings for ``host`` from the global flags (cached per host).

        ``--plain-http`` forces http:// everywhere.  ``--ca-file`` names the CA
        bundle to verify against and, since a CA only means something for TLS,
        forces https:// everywhere, loopback hosts included.  Otherwise loopback
        hosts use plain HTTP and every other host HTTPS.  ``--insecure`` skips
        TLS certificate verification and leaves the choice of scheme alone (so
        ``--insecure`` with a local plain-HTTP registry keeps working).
        ``--connect-timeout``, ``--timeout`` and ``--retry-deadline`` set the
        options' time-outs; absent, their defaults stay.
        """
        cached = self._options.get(host)
        if cached is not None:
            return cached
        plain_http: bool | None = None
        if self.plain_http:
            plain_http = True
        elif self.ca_file is not None:
            plain_http = False
        defaults = RegistryOptions()
        options = RegistryOptions(
            credentials=self.credentials(host),
            plain_http=plain_http,
            insecure=self.insecure,
            ca_file=self.ca_file,
            connect_timeout=self.connect_timeout or defaults.connect_timeout,
            read_timeout=self.read_timeout or defaults.read_timeout,
            retry_deadline=self.retry_deadline or defaults.retry_deadline,
        )
        self._options[host] = options
        return options

    def open_target(self, ref: Reference, *, create: bool = False) -> Target:
        """The target serving ``ref``'s location, opened once and shared.

        ``create`` lets an OCI layout directory be created (destinations).  The
        context closes the target in :meth:`aclose`; commands must not.
        """
        return self.targets.open(ref, create=create)

    async def aclose(self) -> None:
        """Close every target opened through this context (errors are logged, not raised)."""
        await self.targets.aclose()
