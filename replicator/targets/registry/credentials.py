"""Where registry credentials come from, and where ``replicator login`` keeps them.

Lookup order for one registry host (the first source that has something wins):

1. explicit flags (``--username`` / ``--password`` / ``--password-stdin``);
2. environment variables, which apply to every registry the process talks to:

   ``REPLICATOR_USERNAME`` and ``REPLICATOR_PASSWORD``
       user name and password (or a personal access token as password);
   ``REPLICATOR_REGISTRY_TOKEN``
       a ready bearer token sent as is (no token-server round trip);

3. the Docker client configuration, ``$DOCKER_CONFIG/config.json`` or
   ``~/.docker/config.json``: ``credHelpers[host]``, then ``credsStore`` (both
   run ``docker-credential-<name> get``), then ``auths[host]`` (``auth`` =
   base64 of ``user:password``, ``identitytoken`` = an OAuth2 refresh token).

Docker Hub's names (``docker.io``, ``index.docker.io``, ``registry-1.docker.io``,
``https://index.docker.io/v1/``) are the same registry here; ``auths`` keys may
be URLs (``https://host:5000/v1/``).  A malformed config file is a
:class:`~replicator.errors.ConfigError` naming the file.  A credential helper
that answers with its documented not-found message means "nothing stored
there" (``auths`` is looked at next); a helper that is missing, fails, prints
something that is not its JSON answer or does not answer within the time limit
(10 s, ``REPLICATOR_CREDENTIAL_HELPER_TIMEOUT``) is a
:class:`~replicator.targets.registry.credential_helpers.CredentialHelperError`
naming it (see :mod:`replicator.targets.registry.credential_helpers`).
``store_login`` reads what it stored back through the same path before it
returns.  Secret values are never logged and are handed to the log redaction.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from replicator.errors import ConfigError, ReplicatorError, UsageError
from replicator.observe.logging import get_logger, register_secret
from replicator.targets.registry.credential_helpers import (
    CredentialHelper,
    CredentialHelperError,
    helper_timeout,
)
from replicator.targets.registry.options import Credentials

log = get_logger(__name__)

ENV_USERNAME = "REPLICATOR_USERNAME"
ENV_PASSWORD = "REPLICATOR_PASSWORD"
ENV_REGISTRY_TOKEN = "REPLICATOR_REGISTRY_TOKEN"

#: Every name Docker Hub goes by; all of them map to ``docker.io`` here.
DOCKER_HUB_ALIASES = frozenset(
    {"docker.io", "index.docker.io", "registry-1.docker.io", "registry.hub.docker.com"}
)
#: The ``auths`` key (and helper server URL) the Docker CLI uses for Docker Hub.
DOCKER_HUB_SERVER = "https://index.docker.io/v1/"
#: User name a credential helper returns when ``Secret`` is an identity token.
IDENTITY_TOKEN_USER = "<token>"


class LoginNotStoredError(ReplicatorError):
    """``store_login`` wrote credentials but reading them back gave something else."""


def _register_all(creds: Credentials) -> Credentials:
    for secret in creds.secrets():
        register_secret(secret)
    return creds


# --------------------------------------------------------------------------- host names


def registry_key(name: str) -> str:
    """Canonical form of a registry name or ``auths`` key, for comparisons.

    Strips a URL scheme and path, lower-cases, and maps every Docker Hub alias
    (including ``https://index.docker.io/v1/``) to ``docker.io``.
    """
    text = name.strip()
    lowered = text.lower()
    for prefix in ("https://", "http://"):
        if lowered.startswith(prefix):
            text = text[len(prefix) :]
            break
    text = text.split("/", 1)[0].lower()
    return "docker.io" if text in DOCKER_HUB_ALIASES else text


def server_address(host: str) -> str:
    """The server string stored in ``auths`` and given to credential helpers."""
    key = registry_key(host)
    return DOCKER_HUB_SERVER if key == "docker.io" else key


# --------------------------------------------------------------------------- config file


def docker_config_path(
    docker_config: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] = os.environ,
) -> Path:
    """The Docker ``config.json`` to use.

    ``docker_config`` may name the file or its directory; otherwise
    ``$DOCKER_CONFIG/config.json`` (from ``env``), else ``~/.docker/config.json``.
    """
    if docker_config is not None:
        path = Path(docker_config)
        return path / "config.json" if path.is_dir() else path
    directory = env.get("DOCKER_CONFIG")
    if directory:
        return Path(directory) / "config.json"
    return Path.home() / ".docker" / "config.json"


def load_docker_config(path: Path) -> dict[str, Any]:
    """Read a Docker ``config.json``; ``{}`` when it does not exist.

    Raises :class:`ConfigError` (naming the file, never showing its content)
    when it cannot be read or is not a JSON object with the expected shapes.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read Docker config ({type(exc).__name__})") from None
    if not text.strip():
        return {}
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"{path}: malformed Docker config: invalid JSON at line {exc.lineno}"
        ) from None
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: malformed Docker config: not a JSON object")
    for name in ("auths", "credHelpers"):
        if name in doc and not isinstance(doc[name], dict):
            raise ConfigError(f"{path}: malformed Docker config: {name!r} is not an object")
    if "credsStore" in doc and not isinstance(doc["credsStore"], str):
        raise ConfigError(f"{path}: malformed Docker config: 'credsStore' is not a string")
    return doc


def _write_docker_config(path: Path, doc: Mapping[str, Any]) -> None:
    """Replace ``path`` atomically with ``doc``, mode 0600."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    data = (json.dumps(doc, indent="\t") + "\n").encode()
    fd, tmp = tempfile.mkstemp(prefix=".config.json.", dir=path.parent)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise ReplicatorError(f"{path}: cannot write Docker config ({exc.strerror})") from None


def _checked_helper_name(name: str, entry: str) -> str:
    """``name`` when it can be the ``<x>`` of ``docker-credential-<x>`` (no path parts)."""
    if "/" in name or "\\" in name or "\x00" in name or name in (".", ".."):
        raise ConfigError(f"{entry}: {name[:80]!r} is not a credential helper name")
    return name


def _helper_for(
    doc: Mapping[str, Any], host: str, path: Path, env: Mapping[str, str]
) -> CredentialHelper | None:
    """The credential helper configured for ``host`` (credHelpers, then credsStore)."""
    key = registry_key(host)
    helpers = doc.get("credHelpers") or {}
    for name, helper in helpers.items():
        if registry_key(name) == key and isinstance(helper, str) and helper:
            entry = f"credHelpers[{name!r}] in {path}"
            return CredentialHelper(
                _checked_helper_name(helper, entry), entry, env, helper_timeout(env)
            )
    store = doc.get("credsStore")
    if isinstance(store, str) and store:
        entry = f"credsStore in {path}"
        return CredentialHelper(_checked_helper_name(store, entry), entry, env, helper_timeout(env))
    return None


def _matching_auth_keys(doc: Mapping[str, Any], host: str) -> list[str]:
    key = registry_key(host)
    return [name for name in (doc.get("auths") or {}) if registry_key(name) == key]


# --------------------------------------------------------------------------- lookups


def _credentials_from_helper(helper: CredentialHelper, host: str) -> Credentials | None:
    """What ``helper`` holds for ``host``; ``None`` when it answers "not found"."""
    found = helper.get(server_address(host))
    if found is None:
        return None
    username, secret = found
    if username == IDENTITY_TOKEN_USER:
        return Credentials(identity_token=secret)
    return Credentials(username=username, password=secret)


def _credentials_from_auths(doc: Mapping[str, Any], host: str, path: Path) -> Credentials | None:
    auths = doc.get("auths") or {}
    for name in _matching_auth_keys(doc, host):
        entry = auths[name]
        if not isinstance(entry, dict):
            raise ConfigError(f"{path}: malformed Docker config: auths[{name!r}] is not an object")
        username = entry.get("username") if isinstance(entry.get("username"), str) else None
        password = entry.get("password") if isinstance(entry.get("password"), str) else None
        encoded = entry.get("auth")
        if isinstance(encoded, str) and encoded:
            username, password = _decode_auth(encoded, name, path)
        identity = entry.get("identitytoken")
        token = entry.get("registrytoken")
        creds = Credentials(
            username=username or None,
            password=password or None,
            identity_token=identity if isinstance(identity, str) and identity else None,
            registry_token=token if isinstance(token, str) and token else None,
        )
        if creds.secrets():
            return creds
    return None


def _decode_auth(encoded: str, name: str, path: Path) -> tuple[str, str]:
    try:
        raw = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True).decode()
    except (binascii.Error, ValueError):
        raise ConfigError(
            f"{path}: malformed Docker config: auths[{name!r}].auth is not base64"
        ) from None
    username, sep, password = raw.partition(":")
    if not sep:
        raise ConfigError(
            f"{path}: malformed Docker config: auths[{name!r}].auth is not 'user:password'"
        )
    return username, password


# --------------------------------------------------------------------------- public API


def resolve_credentials(
    host: str,
    *,
    username: str | None = None,
    password: str | None = None,
    env: Mapping[str, str] = os.environ,
    docker_config: str | os.PathLike[str] | None = None,
) -> Credentials | None:
    """The credentials to use for ``host``, or ``None`` for anonymous access.

    Precedence: explicit ``username``/``password`` (both needed, unless the
    other half is in the environment), then the ``REPLICATOR_*`` environment
    variables, then the Docker config (see the module docstring).  Raises
    :class:`UsageError` for a user name without any password (or the reverse),
    :class:`ConfigError` for a malformed Docker config and
    :class:`CredentialHelperError` for a credential helper that cannot answer.
    """
    env_user = env.get(ENV_USERNAME) or None
    env_password = env.get(ENV_PASSWORD) or None
    env_token = env.get(ENV_REGISTRY_TOKEN) or None

    if username is not None or password is not None:
        user = username if username is not None else env_user
        secret = password if password is not None else env_password
        if user is None or secret is None:
            missing = "a password" if secret is None else "a user name"
            raise UsageError(
                f"credentials for {host} need {missing} too "
                f"(--username with --password or --password-stdin)"
            )
        log.debug("credentials.found", registry=host, source="flags")
        return _register_all(Credentials(username=user, password=secret))

    if env_token or (env_user and env_password):
        log.debug("credentials.found", registry=host, source="environment")
        return _register_all(
            Credentials(
                username=env_user if env_password else None,
                password=env_password if env_user else None,
                registry_token=env_token,
            )
        )
    if env_user or env_password:
        raise UsageError(f"set both {ENV_USERNAME} and {ENV_PASSWORD}, or neither")
    return _credentials_from_docker_config(host, docker_config_path(docker_config, env), env)


def _credentials_from_docker_config(
    host: str, path: Path, env: Mapping[str, str]
) -> Credentials | None:
    """The Docker config's credentials for ``host``: its helper, then ``auths``."""
    doc = load_docker_config(path)
    if not doc:
        return None
    helper = _helper_for(doc, host, path, env)
    if helper is not None:
        creds = _credentials_from_helper(helper, host)
        if creds is not None:
            log.debug("credentials.found", registry=host, source=f"helper:{helper.name}")
            return _register_all(creds)
    creds = _credentials_from_auths(doc, host, path)
    if creds is not None:
        log.debug("credentials.found", registry=host, source="docker-config")
        return _register_all(creds)
    log.debug("credentials.none_found", registry=host)
    return None


def store_login(
    host: str,
    username: str,
    password: str,
    docker_config: str | os.PathLike[str] | None = None,
    *,
    env: Mapping[str, str] = os.environ,
) -> Path:
    """Remember credentials for ``host`` the way ``docker login`` does, and check them.

    With a credential helper configured for the host (``credHelpers`` or
    ``credsStore``), ``docker-credential-<x> store`` keeps the secret and
    ``auths`` gets an empty entry; otherwise ``auths[host].auth`` holds
    base64(``user:password``).  The file is rewritten atomically with mode 0600
    and every other key is preserved.  Before returning, the credentials are
    read back the way later commands will look them up (the helper's ``get``,
    or the rewritten file) and compared.  A helper that fails to store raises
    :class:`CredentialHelperError`; credentials that do not read back the same
    raise :class:`LoginNotStoredError` (with a helper, before the config file
    is touched).  Returns the config file's path.
    """
    register_secret(password)
    path = docker_config_path(docker_config, env)
    doc = load_docker_config(path)
    server = server_address(host)
    auths: dict[str, Any] = dict(doc.get("auths") or {})
    for name in _matching_auth_keys(doc, host):
        del auths[name]
    helper = _helper_for(doc, host, path, env)
    if helper is not None:
        helper.store(server, username, password)
        try:
            found = helper.get(server)
        except CredentialHelperError as exc:
            raise LoginNotStoredError(
                f"login {host}: the credentials were stored, but reading them back "
                f"failed: {exc.message}; the login cannot be used"
            ) from None
        _check_read_back(host, found, (username, password), helper.program)
        auths[server] = {}
    else:
        encoded = base64.b64encode(f"{username}:{password}".encode()).decode("ascii")
        register_secret(encoded)
        auths[server] = {"auth": encoded}
    doc = dict(doc)
    doc["auths"] = auths
    _write_docker_config(path, doc)
    if helper is None:
        written = _credentials_from_auths(load_docker_config(path), host, path)
        found = (written.username or "", written.password or "") if written else None
        _check_read_back(host, found, (username, password), str(path))
    log.debug(
        "credentials.stored",
        registry=host,
        path=str(path),
        helper=helper.program if helper else None,
    )
    return path


def _check_read_back(
    host: str, found: tuple[str, str] | None, expected: tuple[str, str], where: str
) -> None:
    """Raise :class:`LoginNotStoredError` unless ``found`` is ``expected`` (no secret shown)."""
    if found == expected:
        log.debug("credentials.read_back_verified", registry=host, where=where)
        return
    if found is None:
        problem = "gives back no credentials for it"
    elif found[0] != expected[0]:
        problem = "gives back a different user name"
    else:
        problem = "gives back a different password"
    log.debug("credentials.read_back_failed", registry=host, where=where, problem=problem)
    raise LoginNotStoredError(
        f"login {host}: the credentials were stored, but {where} {problem} "
        "right after storing them; the login cannot be used"
    )


def remove_login(
    host: str,
    docker_config: str | os.PathLike[str] | None = None,
    *,
    env: Mapping[str, str] = os.environ,
) -> bool:
    """Forget the credentials stored for ``host``; True if anything was removed.

    Erases them from the configured credential helper first: a helper that
    fails (other than answering that it holds nothing) raises
    :class:`CredentialHelperError` and leaves the config file unchanged, so
    no secret stays behind unnoticed.
    """
    path = docker_config_path(docker_config, env)
    doc = load_docker_config(path)
    removed = False
    helper = _helper_for(doc, host, path, env)
    if helper is not None:
        removed = helper.erase(server_address(host))
    keys = _matching_auth_keys(doc, host)
    if keys:
        auths = dict(doc.get("auths") or {})
        for name in keys:
            del auths[name]
        doc = dict(doc)
        doc["auths"] = auths
        _write_docker_config(path, doc)
        removed = True
    log.debug("credentials.removed", registry=host, removed=removed)
    return removed


__all__ = [
    "DOCKER_HUB_ALIASES",
    "DOCKER_HUB_SERVER",
    "ENV_PASSWORD",
    "ENV_REGISTRY_TOKEN",
    "ENV_USERNAME",
    "IDENTITY_TOKEN_USER",
    "CredentialHelperError",
    "LoginNotStoredError",
    "docker_config_path",
    "load_docker_config",
    "registry_key",
    "remove_login",
    "resolve_credentials",
    "server_address",
    "store_login",
]
