"""Real ``docker-registry`` (CNCF distribution 2.8) processes for tests.

:func:`start_registry` brings up one variant on a free 127.0.0.1 port with its
storage, configuration and log in a private directory, waits until ``/v2/``
answers and returns a :class:`RunningRegistry` whose ``.instance`` (a
:class:`RegistryInstance`) tells clients how to talk to it.  Variants:

``open``       no authentication, plain HTTP;
``basic``      ``auth.htpasswd`` with bcrypt users whose passwords are random per run;
``token``      ``auth.token`` backed by :mod:`tests.infra.token_server` (several users
               with different rights, see :data:`TOKEN_USERS`);
``tls``        HTTPS with a server certificate from a throw-away ``trustme`` CA;
``referrers``  an open registry behind :mod:`tests.infra.shim`, which adds the
               OCI 1.1 referrers API.

Every variant enables deletes.  The registry logs to ``registry.log`` in its
directory; start-up failures quote the tail of that log.  Each registry has a
fixed ``http.secret`` (the key of the state its upload locations carry) in a
config file written once, so :meth:`RunningRegistry.restart` brings it back on
the same port, storage and secret: upload sessions open before the restart go
on after it.  :func:`upload_patches` reads the chunk offsets of the ``PATCH``
requests a registry served from its log.
"""

from __future__ import annotations

import base64
import datetime
import json
import os
import re
import secrets
import shutil
import ssl
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from replicator.targets.registry.options import Credentials, RegistryOptions

from .process import (
    REPO_ROOT,
    ManagedProcess,
    StartupError,
    child_env,
    free_port,
    python_module_argv,
)

Variant = Literal["open", "basic", "token", "tls", "referrers"]
VARIANTS: tuple[Variant, ...] = ("open", "basic", "token", "tls", "referrers")

REGISTRY_BINARY = "/usr/bin/docker-registry"
#: Environment variable naming another docker-registry binary.
BINARY_ENV = "REPLICATOR_TEST_REGISTRY"
TOKEN_SERVICE = "replicator-test-registry"
TOKEN_ISSUER = "replicator-test-token-server"

#: Rights of the token variant's users: (type, name pattern (fnmatch), actions).
#: ``admin`` may do anything, ``reader`` only pull, ``limited`` push only under
#: ``lim/`` and pull under ``lim/`` and ``shared/``.  Anonymous users may pull
#: repositories under ``public/``.
TOKEN_USERS: dict[str, list[dict[str, Any]]] = {
    "admin": [
        {"type": "repository", "name": "*", "actions": ["pull", "push", "delete", "*"]},
        {"type": "registry", "name": "catalog", "actions": ["*"]},
    ],
    "reader": [{"type": "repository", "name": "*", "actions": ["pull"]}],
    "limited": [
        {"type": "repository", "name": "lim/*", "actions": ["pull", "push", "delete"]},
        {"type": "repository", "name": "shared/*", "actions": ["pull"]},
    ],
}
TOKEN_ANONYMOUS: list[dict[str, Any]] = [
    {"type": "repository", "name": "public/*", "actions": ["pull"]},
]
BASIC_USERS: tuple[str, ...] = ("alice", "bob")


class RegistryBinaryMissing(StartupError):
    """``docker-registry`` is not installed: run scripts/setup.sh."""


@dataclass
class RegistryInstance:
    """How a client reaches one running test registry.

    ``host`` is ``127.0.0.1:PORT`` of what clients talk to (the shim for the
    ``referrers`` variant, the proxy for a fault proxy).  ``username``/``password``
    are the default user (None for open registries); ``users`` maps every known
    user to its password (token and basic variants).  ``ca_file`` is the CA PEM
    that signs a TLS registry's certificate.  ``options()`` returns
    :class:`RegistryOptions` that work for this registry.
    """

    name: str
    host: str
    scheme: Literal["http", "https"] = "http"
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ca_file: str | None = None
    users: dict[str, str] = field(default_factory=dict, repr=False)
    #: The token server's base URL (token variant only), e.g. ``http://127.0.0.1:P``.
    token_url: str | None = None
    #: The registry's log file (the inner registry's for the shim).
    log_file: Path | None = None
    #: For the shim / proxies: the instance behind it.
    upstream: RegistryInstance | None = None

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:5000`` (no trailing slash)."""
        return f"{self.scheme}://{self.host}"

    def credentials(self, user: str | None = None) -> Credentials | None:
        """Credentials of ``user`` (default: the instance's default user)."""
        name = user if user is not None else self.username
        if name is None:
            return None
        password = self.users.get(name, self.password if name == self.username else None)
        if password is None:
            raise KeyError(f"no user {name!r} on the {self.name} registry")
        return Credentials(username=name, password=password)

    def options(self, user: str | None = None, **overrides: Any) -> RegistryOptions:
        """RegistryOptions that work for this registry, as ``user`` when given.

        TLS sets ``plain_http=False`` explicitly (loopback hosts default to plain
        HTTP) and ``ca_file``; every other variant uses plain HTTP.  ``overrides``
        replace any field (e.g. ``retry=RetryPolicy(attempts=2)``).
        """
        opts = RegistryOptions(
            credentials=self.credentials(user),
            plain_http=self.scheme == "http",
            ca_file=self.ca_file,
        )
        return replace(opts, **overrides) if overrides else opts

    def ssl_context(self) -> ssl.SSLContext | None:
        """An SSL context trusting ``ca_file`` (None for plain HTTP)."""
        if self.scheme != "https":
            return None
        return ssl.create_default_context(cafile=self.ca_file)

    def basic_auth_header(self, user: str | None = None) -> dict[str, str]:
        """``Authorization: Basic`` for ``user`` ({} for open registries)."""
        creds = self.credentials(user)
        if creds is None or creds.username is None or creds.password is None:
            return {}
        raw = f"{creds.username}:{creds.password}".encode()
        return {"Authorization": "Basic " + base64.b64encode(raw).decode()}

    def token(self, scopes: list[str], user: str | None = None) -> str:
        """A bearer token from the token server for ``scopes`` (token variant only).

        Blocking (urllib); meant for tests that speak HTTP by hand.
        """
        if self.token_url is None:
            raise ValueError(f"the {self.name} registry has no token server")
        query = "&".join(
            [f"service={TOKEN_SERVICE}"] + [f"scope={urllib.parse.quote(s)}" for s in scopes]
        )
        req = urllib.request.Request(
            f"{self.token_url}/token?{query}", headers=self.basic_auth_header(user)
        )
        with urllib.request.urlopen(req, timeout=30) as resp:
            body = json.loads(resp.read())
        token: str = body["token"]
        return token

    def token_log(self) -> list[dict[str, Any]]:
        """Every request the token server has recorded (token variant only)."""
        if self.token_url is None:
            raise ValueError(f"the {self.name} registry has no token server")
        with urllib.request.urlopen(f"{self.token_url}/_log", timeout=30) as resp:
            entries: list[dict[str, Any]] = json.loads(resp.read())
        return entries


@dataclass
class RunningRegistry:
    """A started variant: its instance plus the processes to stop."""

    instance: RegistryInstance
    processes: list[ManagedProcess]
    workdir: Path

    def stop(self) -> None:
        """Stop every process of this variant (front ones first).  Storage is kept."""
        for proc in reversed(self.processes):
            proc.stop()

    def start(self, timeout: float = 60.0) -> None:
        """Start the stopped processes again, same ports, config and storage."""
        for proc in self.processes:
            if not proc.alive():
                proc.start(timeout=timeout)

    def restart(self, timeout: float = 60.0, *, downtime: float = 0.0) -> None:
        """Stop, stay down ``downtime`` seconds, start again: a registry outage that ends.

        Port, configuration (``http.secret`` included), storage and log are
        kept, so upload sessions survive; the shim's referrers memory does not.
        With ``drain_timeout`` given at start, a stop lets requests in flight
        finish first (as a registry deployed for graceful restarts does).
        """
        self.stop()
        if downtime > 0:
            time.sleep(downtime)
        self.start(timeout=timeout)

    def kill(self) -> None:
        """SIGKILL every process of this variant (a crash, not a clean stop)."""
        for proc in reversed(self.processes):
            proc.kill()


def registry_binary() -> str:
    """Path of docker-registry, or raise RegistryBinaryMissing.

    ``$REPLICATOR_TEST_REGISTRY`` overrides the path (it must then exist).
    """
    override = os.environ.get(BINARY_ENV)
    if override:
        if not (Path(override).is_file() and os.access(override, os.X_OK)):
            raise RegistryBinaryMissing(
                f"${BINARY_ENV} names {override!r}, which is not an executable file"
            )
        return override
    found = shutil.which("docker-registry") or (
        REGISTRY_BINARY if Path(REGISTRY_BINARY).exists() else None
    )
    if not found:
        raise RegistryBinaryMissing(
            "docker-registry is not installed (expected /usr/bin/docker-registry); "
            "run scripts/setup.sh (apt-get install docker-registry)"
        )
    return found


def _registry_config(
    workdir: Path,
    port: int,
    *,
    auth: dict[str, Any] | None,
    tls: dict[str, str] | None,
    drain_timeout: float | None = None,
) -> dict[str, Any]:
    http: dict[str, Any] = {
        "addr": f"127.0.0.1:{port}",
        # Fixed for the registry's life (the config is written once): upload
        # locations signed with it stay valid across restarts.
        "secret": secrets.token_hex(16),
        "headers": {"X-Content-Type-Options": ["nosniff"]},
    }
    if tls:
        http["tls"] = tls
    if drain_timeout is not None:
        http["draintimeout"] = f"{drain_timeout:g}s"
    config: dict[str, Any] = {
        "version": "0.1",
        "log": {"level": "info", "formatter": "text", "accesslog": {"disabled": True}},
        "storage": {
            "filesystem": {"rootdirectory": str(workdir / "data")},
            "delete": {"enabled": True},
            "maintenance": {"uploadpurging": {"enabled": False}},
        },
        "http": http,
    }
    if auth:
        config["auth"] = auth
    return config


def _start_registry_process(
    workdir: Path,
    *,
    label: str,
    auth: dict[str, Any] | None = None,
    tls: dict[str, str] | None = None,
    ssl_context: ssl.SSLContext | None = None,
    timeout: float = 60.0,
    drain_timeout: float | None = None,
) -> tuple[ManagedProcess, int]:
    binary = registry_binary()
    workdir.mkdir(parents=True, exist_ok=True)
    last: StartupError | None = None
    for _attempt in range(3):  # a free port can be taken between probe and bind
        port = free_port()
        config_path = workdir / "config.yml"
        # JSON is YAML: no YAML library needed.
        config_path.write_text(
            json.dumps(
                _registry_config(workdir, port, auth=auth, tls=tls, drain_timeout=drain_timeout),
                indent=2,
            )
        )
        scheme = "https" if tls else "http"
        proc = ManagedProcess(
            f"docker-registry ({label})",
            [binary, "serve", str(config_path)],
            log_path=workdir / "registry.log",
            ready_url=f"{scheme}://127.0.0.1:{port}/v2/",
            ssl_context=ssl_context,
        )
        try:
            proc.start(timeout=timeout)
            return proc, port
        except StartupError as exc:
            last = exc
            if "address already in use" not in str(exc):
                raise
    assert last is not None
    raise last


def _htpasswd_line(user: str, password: str) -> str:
    import bcrypt

    # Cost 4 (the minimum) keeps every authenticated request fast.
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()
    return f"{user}:{hashed}"


def _signing_material(workdir: Path) -> tuple[Path, Path]:
    """An RSA key and a self-signed certificate for the token server."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "replicator test token signer")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    key_path = workdir / "token-signing.key"
    cert_path = workdir / "token-signing.crt"
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key_path, cert_path


def start_open(workdir: Path, *, drain_timeout: float | None = None) -> RunningRegistry:
    """An open registry (no auth, plain HTTP).

    ``drain_timeout``: seconds a stop waits for requests in flight (graceful stop).
    """
    proc, port = _start_registry_process(workdir, label="open", drain_timeout=drain_timeout)
    inst = RegistryInstance(name="open", host=f"127.0.0.1:{port}", log_file=proc.log_path)
    return RunningRegistry(inst, [proc], workdir)


def _random_password() -> str:
    """24 random URL-safe characters, never starting with ``-``.

    A password like ``-x...`` after ``--password`` reads as an option to argparse
    (users write ``--password=-x...``); ``token_urlsafe`` starts one in 64 that way,
    which made the tests that pass the password as a separate argument flaky.
    """
    return "p" + secrets.token_urlsafe(18)[1:]


def start_basic(workdir: Path) -> RunningRegistry:
    """A registry with htpasswd (bcrypt) users with random passwords."""
    workdir.mkdir(parents=True, exist_ok=True)
    users = {name: _random_password() for name in BASIC_USERS}
    htpasswd = workdir / "htpasswd"
    htpasswd.write_text("".join(_htpasswd_line(u, p) + "\n" for u, p in users.items()))
    auth = {"htpasswd": {"realm": "replicator-test", "path": str(htpasswd)}}
    proc, port = _start_registry_process(workdir, label="basic", auth=auth)
    first = BASIC_USERS[0]
    inst = RegistryInstance(
        name="basic",
        host=f"127.0.0.1:{port}",
        username=first,
        password=users[first],
        users=users,
        log_file=proc.log_path,
    )
    return RunningRegistry(inst, [proc], workdir)


def start_token(
    workdir: Path, *, token_ttl: int = 300, token_real_ttl: int | None = None
) -> RunningRegistry:
    """A registry with token auth, backed by a token server process.

    ``token_ttl`` is the lifetime tokens claim (``expires_in``);
    ``token_real_ttl`` makes the registry refuse them that many seconds after
    they were issued instead (see :mod:`tests.infra.token_server`).
    """
    workdir.mkdir(parents=True, exist_ok=True)
    key_path, cert_path = _signing_material(workdir)
    users = {name: _random_password() for name in TOKEN_USERS}
    users_file = workdir / "token-users.json"
    users_file.write_text(
        json.dumps(
            {
                "users": {
                    name: {"password": users[name], "access": rules}
                    for name, rules in TOKEN_USERS.items()
                },
                "anonymous": TOKEN_ANONYMOUS,
            },
            indent=2,
        )
    )
    users_file.chmod(0o600)
    token_port = free_port()
    token_proc = ManagedProcess(
        "token server",
        python_module_argv(
            "tests.infra.token_server",
            "--port",
            str(token_port),
            "--key",
            str(key_path),
            "--cert",
            str(cert_path),
            "--users",
            str(users_file),
            "--issuer",
            TOKEN_ISSUER,
            "--ttl",
            str(token_ttl),
            *(("--real-ttl", str(token_real_ttl)) if token_real_ttl is not None else ()),
        ),
        log_path=workdir / "token-server.log",
        ready_url=f"http://127.0.0.1:{token_port}/_health",
        ready_statuses=(200,),
        env=child_env(),
        cwd=REPO_ROOT,
    )
    token_proc.start()
    token_url = f"http://127.0.0.1:{token_port}"
    auth = {
        "token": {
            "realm": f"{token_url}/token",
            "service": TOKEN_SERVICE,
            "issuer": TOKEN_ISSUER,
            "rootcertbundle": str(cert_path),
        }
    }
    try:
        proc, port = _start_registry_process(workdir, label="token", auth=auth)
    except BaseException:
        token_proc.stop()
        raise
    inst = RegistryInstance(
        name="token",
        host=f"127.0.0.1:{port}",
        username="admin",
        password=users["admin"],
        users=users,
        token_url=token_url,
        log_file=proc.log_path,
    )
    return RunningRegistry(inst, [token_proc, proc], workdir)


def start_tls(workdir: Path) -> RunningRegistry:
    """An open registry over HTTPS with a certificate from a throw-away CA."""
    import trustme

    workdir.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    ca_file = workdir / "ca.pem"
    cert_file = workdir / "server.pem"
    key_file = workdir / "server.key"
    ca.cert_pem.write_to_path(str(ca_file))
    cert_file.write_bytes(b"".join(blob.bytes() for blob in server.cert_chain_pems))
    server.private_key_pem.write_to_path(str(key_file))
    ctx = ssl.create_default_context(cafile=str(ca_file))
    proc, port = _start_registry_process(
        workdir,
        label="tls",
        tls={"certificate": str(cert_file), "key": str(key_file)},
        ssl_context=ctx,
    )
    inst = RegistryInstance(
        name="tls",
        host=f"127.0.0.1:{port}",
        scheme="https",
        ca_file=str(ca_file),
        log_file=proc.log_path,
    )
    return RunningRegistry(inst, [proc], workdir)


def start_referrers(workdir: Path) -> RunningRegistry:
    """An open registry behind the referrers-API shim."""
    inner = start_open(workdir / "inner")
    shim_port = free_port()
    shim = ManagedProcess(
        "referrers shim",
        python_module_argv(
            "tests.infra.shim",
            "--port",
            str(shim_port),
            "--upstream",
            inner.instance.url,
        ),
        log_path=workdir / "shim.log",
        ready_url=f"http://127.0.0.1:{shim_port}/v2/",
        ready_statuses=(200,),
        env=child_env(),
        cwd=REPO_ROOT,
    )
    try:
        shim.start()
    except BaseException:
        inner.stop()
        raise
    inst = RegistryInstance(
        name="referrers",
        host=f"127.0.0.1:{shim_port}",
        log_file=inner.instance.log_file,
        upstream=inner.instance,
    )
    return RunningRegistry(inst, [*inner.processes, shim], workdir)


STARTERS: dict[Variant, Callable[..., RunningRegistry]] = {
    "open": start_open,
    "basic": start_basic,
    "token": start_token,
    "tls": start_tls,
    "referrers": start_referrers,
}


def start_registry(variant: Variant, workdir: Path, **kwargs: Any) -> RunningRegistry:
    """Start ``variant`` with everything under ``workdir``; raise StartupError on failure.

    ``kwargs`` go to the variant's starter (``token_ttl``, ``token_real_ttl``
    for ``token``; ``drain_timeout`` for ``open``).
    """
    return STARTERS[variant](workdir, **kwargs)


@dataclass(frozen=True)
class UploadPatch:
    """One ``PATCH`` of a chunked upload a registry served, as its log tells."""

    repository: str
    upload: str
    #: The offset the upload location carried: where this chunk was to start.
    offset: int
    status: int


_PATCH_LINE = re.compile(
    r'http\.request\.method=PATCH .*?http\.request\.uri="?([^" ]+)"? .*?'
    r"http\.response\.status=(\d+)"
)


def upload_patches(log_file: Path) -> list[UploadPatch]:
    """Every ``PATCH`` a registry logged, in order, with the offset its location carried.

    distribution's upload locations carry ``_state``: base64url of an HMAC-SHA256
    (32 bytes) followed by JSON with ``Name``, ``UUID`` and ``Offset``.
    """
    out: list[UploadPatch] = []
    for line in log_file.read_text(errors="replace").splitlines():
        match = _PATCH_LINE.search(line)
        if not match:
            continue
        query = urllib.parse.urlsplit(match.group(1)).query
        state = urllib.parse.parse_qs(query).get("_state")
        if not state:
            continue
        raw = base64.urlsafe_b64decode(state[0] + "=" * (-len(state[0]) % 4))
        doc = json.loads(raw[32:])
        out.append(UploadPatch(doc["Name"], doc["UUID"], int(doc["Offset"]), int(match.group(2))))
    return out
