"""Docker credential helpers: the ``docker-credential-<name>`` programs and their protocol.

A helper is named in the Docker config by ``credHelpers[host]`` or
``credsStore``; the program ``docker-credential-<name>`` is looked up on
``PATH`` and run once per action:

``get``
    reads the server address on stdin, prints ``{"ServerURL", "Username",
    "Secret"}`` as JSON; a helper that knows nothing for the server exits
    non-zero and prints ``credentials not found in native keychain`` (the
    documented not-found answer, :data:`NOT_FOUND_MESSAGE`);
``store``
    reads ``{"ServerURL", "Username", "Secret"}`` as JSON on stdin;
``erase``
    reads the server address on stdin.

Guarantees: a helper that cannot do its job is never mistaken for "no
credentials".  A missing program, a program that cannot be started, a non-zero
exit (other than the not-found answer), output that is not the expected JSON
and a helper that does not answer within the time limit each raise one
:class:`CredentialHelperError` naming the program, the config entry that chose
it and what went wrong.  Every helper runs for at most
:data:`DEFAULT_HELPER_TIMEOUT` seconds (10), or what
``REPLICATOR_CREDENTIAL_HELPER_TIMEOUT`` says, and is killed after that.
Every secret a helper returns is registered with the log redaction before
anything else happens; the helper's own message, quoted in errors, is cut to
its first line and passed through the redaction, and its standard output is
never quoted when it might hold a secret.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from replicator.errors import ConfigError, ReplicatorError
from replicator.observe.logging import get_logger, redact_text, register_secret

log = get_logger(__name__)

#: Seconds a credential helper may take for one action, unless configured otherwise.
DEFAULT_HELPER_TIMEOUT = 10.0
#: Environment variable overriding :data:`DEFAULT_HELPER_TIMEOUT` (seconds, > 0).
ENV_HELPER_TIMEOUT = "REPLICATOR_CREDENTIAL_HELPER_TIMEOUT"
#: What every helper prints when it holds no credentials for the server.
NOT_FOUND_MESSAGE = "credentials not found in native keychain"

_MAX_MESSAGE = 200


class CredentialHelperError(ReplicatorError):
    """A ``docker-credential-*`` helper is missing, failed, hung or answered garbage.

    The message names the program, the Docker config entry that chose it and
    what went wrong; it never contains a secret.  ``program`` and ``action``
    (``get``, ``store``, ``erase``) are kept for callers.
    """

    def __init__(self, message: str, *, program: str, action: str) -> None:
        super().__init__(message)
        self.program = program
        self.action = action


def helper_timeout(env: Mapping[str, str] = os.environ) -> float:
    """The time limit for one helper action: ``$REPLICATOR_CREDENTIAL_HELPER_TIMEOUT`` or 10 s.

    Raises :class:`ConfigError` when the variable is set to something that is
    not a finite number of seconds greater than zero.
    """
    text = env.get(ENV_HELPER_TIMEOUT, "").strip()
    if not text:
        return DEFAULT_HELPER_TIMEOUT
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(
            f"{ENV_HELPER_TIMEOUT}={text[:40]!r}: expected a number of seconds greater than 0"
        )
    return value


def _first_line(data: bytes) -> str:
    """The first non-blank line of ``data``, printable, redacted and clipped."""
    text = data.decode("utf-8", errors="replace")
    for line in text.splitlines():
        line = line.strip()
        if line:
            if not line.isprintable():
                line = line.encode("unicode_escape").decode("ascii")
            line = redact_text(line)
            if len(line) > _MAX_MESSAGE:
                line = line[: _MAX_MESSAGE - 1] + "…"
            return line
    return ""


def _parse_answer(stdout: bytes) -> dict[str, Any] | None:
    """The JSON object a ``get`` printed, or ``None``; any ``Secret`` in it is registered."""
    try:
        doc = json.loads(stdout)
    except ValueError:
        return None
    if not isinstance(doc, dict):
        return None
    secret = doc.get("Secret")
    if isinstance(secret, str):
        register_secret(secret)
    return doc


def _says_not_found(result: subprocess.CompletedProcess[bytes]) -> bool:
    for stream in (result.stdout, result.stderr):
        text = stream.decode("utf-8", errors="replace").strip()
        if text.lower() == NOT_FOUND_MESSAGE:
            return True
    return False


@dataclass(frozen=True, slots=True)
class CredentialHelper:
    """One ``docker-credential-<name>`` program, as one Docker config entry chose it.

    ``configured_by`` says which entry (``credsStore in /home/u/.docker/config.json``)
    so errors can point at it; ``env`` supplies the ``PATH`` the program is
    looked up on; ``timeout`` bounds every action.
    """

    name: str
    configured_by: str
    env: Mapping[str, str]
    timeout: float = DEFAULT_HELPER_TIMEOUT

    @property
    def program(self) -> str:
        """The program's name, ``docker-credential-<name>``."""
        return f"docker-credential-{self.name}"

    def get(self, server: str) -> tuple[str, str] | None:
        """``(username, secret)`` the helper holds for ``server``; ``None`` if it holds none.

        ``None`` means the helper gave its documented not-found answer (or a
        JSON answer with an empty secret).  Anything else that is not a proper
        answer raises :class:`CredentialHelperError`.
        """
        result = self._run("get", server)
        answer = _parse_answer(result.stdout)
        if result.returncode != 0:
            if _says_not_found(result):
                log.debug("credentials.helper_had_none", helper=self.program, server=server)
                return None
            raise self._failed("get", server, result, quote_stdout=answer is None)
        username = answer.get("Username", "") if answer is not None else None
        secret = answer.get("Secret", "") if answer is not None else None
        if not isinstance(username, str) or not isinstance(secret, str):
            raise self._error(
                "get",
                f"answered 'get {server}' with output that is not the expected JSON "
                '(an object with string "Username" and "Secret")',
            )
        if not secret:
            log.debug("credentials.helper_gave_empty_secret", helper=self.program, server=server)
            return None
        return username, secret

    def store(self, server: str, username: str, secret: str) -> None:
        """Have the helper keep ``username``/``secret`` for ``server`` (raises on failure)."""
        register_secret(secret)
        payload = json.dumps({"ServerURL": server, "Username": username, "Secret": secret})
        result = self._run("store", payload)
        if result.returncode != 0:
            raise self._failed("store", server, result, quote_stdout=True)

    def erase(self, server: str) -> bool:
        """Have the helper forget ``server``; ``False`` when it held nothing for it."""
        result = self._run("erase", server)
        if result.returncode == 0:
            return True
        if _says_not_found(result):
            return False
        raise self._failed("erase", server, result, quote_stdout=True)

    # ------------------------------------------------------------------ running

    def _error(self, action: str, problem: str) -> CredentialHelperError:
        return CredentialHelperError(
            f"credential helper {self.program} (from {self.configured_by}) {problem}",
            program=self.program,
            action=action,
        )

    def _failed(
        self,
        action: str,
        server: str,
        result: subprocess.CompletedProcess[bytes],
        *,
        quote_stdout: bool,
    ) -> CredentialHelperError:
        """The error for a non-zero exit: status and the helper's first line of complaint."""
        code = result.returncode
        status = f"killed by signal {-code}" if code < 0 else f"exit status {code}"
        # Helpers built on docker-credential-helpers print their errors on stdout.
        said = _first_line(result.stderr)
        if not said and quote_stdout and not result.stdout.lstrip().startswith(b"{"):
            said = _first_line(result.stdout)
        detail = f"{status}: {said}" if said else f"{status}, no message"
        return self._error(action, f"failed to {action} the credentials for {server} ({detail})")

    def _run(self, action: str, payload: str) -> subprocess.CompletedProcess[bytes]:
        """Run ``<program> <action>`` with ``payload`` on stdin, within the time limit."""
        found = shutil.which(self.program, path=self.env.get("PATH", os.environ.get("PATH")))
        if found is None:
            log.debug("credentials.helper_missing", helper=self.program)
            raise self._error(action, f"is not installed: no program {self.program} on PATH")
        try:
            result = subprocess.run(
                [found, action],
                input=payload.encode(),
                capture_output=True,
                timeout=self.timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            log.debug("credentials.helper_timed_out", helper=self.program, action=action)
            raise self._error(
                action,
                f"did not answer '{action}' within {self.timeout:g} s and was stopped "
                f"(set {ENV_HELPER_TIMEOUT} to allow more time)",
            ) from None
        except OSError as exc:
            log.debug("credentials.helper_unstartable", helper=self.program, error=exc.strerror)
            raise self._error(
                action, f"could not be started: {exc.strerror or type(exc).__name__}"
            ) from None
        log.debug(
            "credentials.helper_ran", helper=self.program, action=action, status=result.returncode
        )
        return result
