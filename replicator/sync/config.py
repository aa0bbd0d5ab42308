"""The sync configuration file: load, validate, cascade ``defaults``, digest, registry options.

:func:`load_config` reads a YAML file (see ``docs/SYNC-CONFIG.md`` for every
key) and returns a :class:`SyncConfig`: the jobs with their effective settings
(a job's own top-level keys replace the same keys of ``defaults`` whole: a
job's ``tags`` replaces the defaults' ``tags``, nothing is merged inside), the
per-host registry settings, and a :attr:`SyncConfig.digest` of the content.

Guarantees:

* every problem of the file is reported at once, one per line, as
  ``FILE:LINE: key.path: message`` saying what is allowed, in one
  :class:`~replicator.sync.yamlsource.ConfigFileError` (a
  :class:`~replicator.errors.ConfigError`, exit 2); key paths count list
  indexes from 0 (``jobs[1].tags.latest``); a problem in an inherited default
  is reported once, at ``defaults``;
* a value under ``credentials`` is never shown in a message, and a literal
  ``password:`` is refused;
* the digest depends only on the parsed content: comments, key order, job order,
  quoting, ``referrers: true`` versus ``referrers: {}`` and whether a value is
  written in the job or inherited from ``defaults`` do not change it; any value
  that changes what a job does does;
* relative paths (``ca-file``, ``password-file``, ``ocidir://`` sources and
  destinations) are relative to the file's directory;
* credentials named by the file (environment variables, password files) are
  read only when :meth:`SyncConfig.registry_options` is called, and every
  secret read is registered with the log redaction.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from replicator.errors import ConfigError
from replicator.observe.logging import get_logger, register_secret
from replicator.oci.reference import normalise_host
from replicator.sync.config_checks import RelPath, check_job, check_registry, translate
from replicator.sync.config_schema import (
    CatalogSource,
    CredentialSettings,
    Document,
    JobDefaults,
    JobSettings,
    PruneRules,
    ReferrerRules,
    RegistryLimits,
    RegistrySettings,
    SyncJob,
    TagRules,
    registry_host,
)
from replicator.sync.yamlsource import KeyPath, Problem, YamlDocument, raise_problems, read_yaml
from replicator.targets.registry.options import Credentials, RateLimits, RegistryOptions

log = get_logger(__name__)

#: Resolves credentials for a host that has none in the file (docker config and helpers).
CredentialResolver = Callable[[str], Credentials | None]


@dataclass(frozen=True, slots=True)
class SyncConfig:
    """A loaded configuration: effective jobs, registry settings by host, content digest."""

    filename: str
    jobs: tuple[SyncJob, ...]
    #: Settings by normalised host (``docker.io`` is ``registry-1.docker.io``).
    registries: Mapping[str, RegistrySettings]
    #: ``sha256:<hex>`` of the canonical content (see the module doc).
    digest: str
    #: By job name: ``sha256:<hex>`` of what a run of the job copies (:func:`job_digest`).
    job_digests: Mapping[str, str]
    #: Where each host's settings were written (key as written, lines), for messages.
    origins: Mapping[str, RegistryOrigin] = field(repr=False, default_factory=dict)

    def job(self, name: str) -> SyncJob:
        """The job called ``name``; :class:`ConfigError` listing the names when there is none."""
        for job in self.jobs:
            if job.name == name:
                return job
        names = ", ".join(j.name for j in self.jobs)
        raise ConfigError(f"{self.filename}: no job named {name!r} (jobs: {names})")

    def registry_settings(self, host: str) -> RegistrySettings | None:
        """The settings the file gives for ``host`` (any spelling of it), or None."""
        return self.registries.get(normalise_host(host))

    def registry_options(
        self,
        host: str,
        *,
        base: RegistryOptions | None = None,
        env: Mapping[str, str] | None = None,
        resolve: CredentialResolver | None = None,
    ) -> RegistryOptions:
        """Connection settings for ``host``: the file's entry over ``base``.

        Credentials come from the entry's environment variables or password
        file (read now, registered with the log redaction); without a
        ``credentials`` entry from ``base`` when given, else from ``resolve(host)``
        (default: the usual resolution — ``REPLICATOR_*`` variables, then the
        Docker config and its helpers).  ``tls: plain-http`` speaks HTTP;
        ``verify`` or a ``ca-file`` force HTTPS with verification, loopback hosts
        included; ``insecure`` skips verification; unset leaves ``base`` (or the
        default: HTTP for loopback hosts only).  ``limits.concurrency`` caps the
        connections; ``limits.requests-per-second``, ``bandwidth`` and
        ``min-remaining`` become the transport's
        :class:`~replicator.targets.registry.options.RateLimits`.  Raises :class:`ConfigError` naming the variable or file
        (never its content) when a credential or the CA file cannot be read.
        """
        key = normalise_host(host)
        settings = self.registries.get(key)
        start = base if base is not None else RegistryOptions()
        if settings is None:
            if base is not None:
                return base
            return dataclasses.replace(start, credentials=_resolver(resolve, env)(key))
        where = self._where(key)
        creds: Credentials | None
        if settings.credentials is not None:
            creds = read_credentials(
                settings.credentials, where, os.environ if env is None else env
            )
        elif base is not None:
            creds = base.credentials
        else:
            creds = _resolver(resolve, env)(key)
        return _apply(start, settings, creds, where)

    def _where(self, host: str) -> Where:
        origin = self.origins.get(host, RegistryOrigin(host, {}))
        return lambda sub: origin.where(self.filename, sub)


#: Gives the start of a message about a key of a registry entry: ``FILE:LINE: registries[H].KEY``.
Where = Callable[[str], str]

#: Keys of a registry entry that messages raised after loading point at.
ORIGIN_KEYS = (
    "credentials.username-env",
    "credentials.password-env",
    "credentials.password-file",
    "ca-file",
)


@dataclass(frozen=True, slots=True)
class RegistryOrigin:
    """Where a registry entry was written: its key as written and the lines of its keys."""

    key: str
    #: Line of each key of :data:`ORIGIN_KEYS` (and ``""``: the entry), when written.
    lines: Mapping[str, int]

    def where(self, filename: str, sub: str) -> str:
        """``FILE:LINE: registries[KEY].SUB``, the line of ``sub`` or else of the entry."""
        line = self.lines.get(sub) or self.lines.get("", 1)
        return f"{filename}:{line}: registries[{self.key}].{sub}"


def _resolver(
    resolve: CredentialResolver | None, env: Mapping[str, str] | None
) -> CredentialResolver:
    if resolve is not None:
        return resolve
    from replicator.targets.registry.credentials import resolve_credentials

    environment = os.environ if env is None else env
    return lambda host: resolve_credentials(host, env=environment)


def _apply(
    start: RegistryOptions, settings: RegistrySettings, creds: Credentials | None, where: Where
) -> RegistryOptions:
    plain_http, insecure = start.plain_http, start.insecure
    if settings.tls == "plain-http":
        plain_http, insecure = True, False
    elif settings.tls == "insecure":
        insecure = True
    elif settings.tls == "verify":
        plain_http, insecure = False, False
    ca_file = start.ca_file
    if settings.ca_file is not None:
        if not os.path.isfile(settings.ca_file):
            raise ConfigError(f"{where('ca-file')}: {settings.ca_file}: no such file")
        ca_file, plain_http = settings.ca_file, False
    connections = settings.limits.concurrency or start.max_connections
    return dataclasses.replace(
        start,
        credentials=creds,
        plain_http=plain_http,
        insecure=insecure,
        ca_file=ca_file,
        max_connections=connections,
        rate_limits=rate_limits(settings.limits, start.rate_limits),
    )


def rate_limits(limits: RegistryLimits, start: RateLimits) -> RateLimits:
    """The transport's rate limits from a registry entry's ``limits``, each set key over ``start``."""
    return dataclasses.replace(
        start,
        requests_per_second=(
            limits.requests_per_second
            if limits.requests_per_second is not None
            else start.requests_per_second
        ),
        bandwidth=limits.bandwidth if limits.bandwidth is not None else start.bandwidth,
        min_remaining=(
            limits.min_remaining if limits.min_remaining is not None else start.min_remaining
        ),
    )


def read_credentials(
    settings: CredentialSettings, where: Where, env: Mapping[str, str]
) -> Credentials:
    """The credentials ``settings`` name, read from the environment or the password file.

    ``where(key)`` (``FILE:LINE: registries[HOST].KEY``) starts every error message.
    Raises :class:`ConfigError` naming the variable or file when it is unset,
    empty or unreadable; the value is never part of a message.
    """
    if settings.username_env is not None:
        username = _from_env(settings.username_env, where("credentials.username-env"), env)
    else:
        username = settings.username or ""
    if settings.password_env is not None:
        password = _from_env(settings.password_env, where("credentials.password-env"), env)
    elif settings.password_file is not None:
        password = _from_file(settings.password_file, where("credentials.password-file"))
    else:  # the schema checks refuse this; kept for a hand-built settings object
        raise ConfigError(f"{where('credentials')}: no password-env or password-file")
    register_secret(password)
    return Credentials(username=username, password=password)


def _from_env(name: str, where: str, env: Mapping[str, str]) -> str:
    value = env.get(name)
    if not value:
        state = "is empty" if value == "" else "is not set"
        raise ConfigError(f"{where}: environment variable {name} {state}")
    return value


def _from_file(path: str, where: str) -> str:
    try:
        with open(path, "rb") as handle:
            mode = os.fstat(handle.fileno()).st_mode
            raw = handle.read(64 * 1024 + 1)
    except OSError as exc:
        raise ConfigError(
            f"{where}: cannot read {path}: {exc.strerror or type(exc).__name__}"
        ) from None
    if len(raw) > 64 * 1024:
        raise ConfigError(f"{where}: {path} is larger than 64 KiB: not a password file")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{where}: {path} is not UTF-8 text") from None
    secret = text[:-1] if text.endswith("\n") else text
    secret = secret[:-1] if secret.endswith("\r") else secret
    if not secret:
        raise ConfigError(f"{where}: {path} is empty")
    if stat.S_IMODE(mode) & 0o077:
        log.warning("credentials.password_file_exposed", path=path, mode=oct(stat.S_IMODE(mode)))
    return secret


# --------------------------------------------------------------------------- loading


def load_config(path: str | os.PathLike[str]) -> SyncConfig:
    """Read and validate the configuration file at ``path`` (relative paths: its directory).

    Raises :class:`ConfigError` for a file that cannot be read and
    :class:`~replicator.sync.yamlsource.ConfigFileError` listing every problem.
    """
    filename = os.fspath(path)
    try:
        raw = Path(filename).read_bytes()
    except OSError as exc:
        raise ConfigError(
            f"{filename}: cannot read: {exc.strerror or type(exc).__name__}"
        ) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{filename}: not UTF-8 text (byte {exc.start})") from None
    base_dir = str(Path(filename).resolve().parent)
    return parse_config(text, filename=filename, base_dir=base_dir)


def parse_config(
    text: str, *, filename: str = "<config>", base_dir: str | os.PathLike[str] | None = None
) -> SyncConfig:
    """Validate configuration ``text``; ``filename`` names it in messages.

    ``base_dir`` anchors relative paths (default: the working directory).
    """
    doc = read_yaml(text, filename)
    base = os.fspath(base_dir) if base_dir is not None else os.getcwd()
    config = _Loader(doc, base).load()
    log.debug("sync.config_loaded", file=filename, jobs=len(config.jobs), digest=config.digest)
    return config


class _Loader:
    """Validates one document, collecting every problem before raising."""

    def __init__(self, doc: YamlDocument, base_dir: str) -> None:
        self.doc = doc
        self.context = {"base_dir": base_dir}
        self.problems: list[Problem] = []

    def problem(self, path: KeyPath, message: str) -> None:
        self.problems.append(Problem(self.doc.line_of(path), path, message))

    def validate(
        self, model: type[BaseModel], data: Any, to_path: Callable[[RelPath], KeyPath]
    ) -> Any:
        try:
            return model.model_validate(data, context=self.context)
        except ValidationError as exc:
            for rel, message in translate(exc, model, self.doc, to_path):
                self.problem(to_path(rel), message)
            return None

    def load(self) -> SyncConfig:
        data = self.doc.data
        if data is None:
            raise_problems(
                self.doc.filename, [Problem(1, (), "empty file: start with 'version: 1'")]
            )
        if not isinstance(data, dict):
            raise_problems(
                self.doc.filename,
                [Problem(1, (), "must be a mapping with version, defaults, registries and jobs")],
            )
        self.validate(Document, data, lambda rel: rel)
        raw_defaults = data.get("defaults")
        defaults = raw_defaults if isinstance(raw_defaults, dict) else {}
        registries = self._registries(data.get("registries"))
        jobs = self._jobs(data.get("jobs"), self._defaults(defaults))
        if self.problems:
            raise_problems(self.doc.filename, self.problems)
        return _build(self.doc, registries, jobs)

    def _defaults(self, raw: dict[str, Any]) -> dict[str, Any]:
        inherited = dict(raw)
        if "name" in inherited:
            self.problem(("defaults", "name"), "a job name has no default: every job names itself")
            del inherited["name"]
        self.validate(JobDefaults, inherited, lambda rel: ("defaults", *rel))
        return inherited

    def _registries(self, raw: Any) -> dict[str, tuple[str, RegistrySettings]]:
        out: dict[str, tuple[str, RegistrySettings]] = {}
        if not isinstance(raw, dict):
            return out
        seen: dict[str, str] = {}
        for key, entry in raw.items():
            path: KeyPath = ("registries", key)
            try:
                host = registry_host(key)
            except ValueError as exc:
                self.problem(path, f"not a registry host: {exc}")
                continue
            if host in seen:
                first = self.doc.line_of(("registries", seen[host]))
                self.problem(path, f"the same registry as {seen[host]!r} (line {first})")
                continue
            seen[host] = key
            if not isinstance(entry, dict):
                continue  # Document reported it
            refused = self._refuse_literal_password(path, entry)
            if refused:
                creds = {k: v for k, v in entry["credentials"].items() if k != "password"}
                entry = {**entry, "credentials": creds}
            settings = self.validate(RegistrySettings, entry, _under(path))
            if settings is None:
                continue
            for rel, message in check_registry(settings):
                if not (refused and message.startswith("needs a password")):
                    self.problem((*path, *rel), message)
            out[host] = (key, settings)
        return out

    def _refuse_literal_password(self, path: KeyPath, entry: dict[str, Any]) -> bool:
        """Report a literal ``password:`` under credentials (True when there is one)."""
        creds = entry.get("credentials")
        if not (isinstance(creds, dict) and "password" in creds):
            return False
        self.problem(
            (*path, "credentials", "password"),
            "a password is not written in the file: use password-env (an environment "
            "variable) or password-file (a file holding it)",
        )
        return True

    def _jobs(self, raw: Any, defaults: dict[str, Any]) -> list[SyncJob]:
        jobs: list[SyncJob] = []
        if not isinstance(raw, list):
            return jobs
        names: dict[str, int] = {}
        for i, entry in enumerate(raw):
            if not isinstance(entry, dict):
                continue  # Document reported it
            inherited = set(defaults) - set(entry)

            def to_path(rel: RelPath, i: int = i, inherited: set[str] = inherited) -> KeyPath:
                if rel and rel[0] in inherited:
                    return ("defaults", *rel)
                return ("jobs", i, *rel)

            name = entry.get("name")
            if isinstance(name, str) and name in names:
                first = self.doc.line_of(("jobs", names[name], "name"))
                self.problem(
                    ("jobs", i, "name"), f"duplicate job name {name!r} (first at line {first})"
                )
            elif isinstance(name, str):
                names[name] = i
            job = self.validate(SyncJob, {**defaults, **entry}, to_path)
            if job is None:
                continue
            for rel, message in check_job(job):
                path = to_path(rel)
                if path[0] == "defaults":
                    message += f" (inherited by job {job.name!r})"
                self.problem(path, message)
            jobs.append(job)
        return jobs


def _origin(doc: YamlDocument, key: str) -> RegistryOrigin:
    entry: KeyPath = ("registries", key)
    lines = {"": doc.line_of(entry)}
    for sub in ORIGIN_KEYS:
        path = (*entry, *sub.split("."))
        if path in doc.lines:
            lines[sub] = doc.lines[path]
    return RegistryOrigin(key, lines)


def _under(prefix: KeyPath) -> Callable[[RelPath], KeyPath]:
    """A path mapper putting relative paths under ``prefix``."""
    return lambda rel: (*prefix, *rel)


def _build(
    doc: YamlDocument, registries: dict[str, tuple[str, RegistrySettings]], jobs: list[SyncJob]
) -> SyncConfig:
    settings = {host: s for host, (_, s) in registries.items()}
    origins = {host: _origin(doc, key) for host, (key, _) in registries.items()}
    job_forms = {job.name: canonical_job(job) for job in jobs}
    content = {
        "version": 1,
        "registries": {h: s.model_dump(mode="json", by_alias=True) for h, s in settings.items()},
        "jobs": [job_forms[name] for name in sorted(job_forms)],
    }
    return SyncConfig(
        filename=doc.filename,
        jobs=tuple(jobs),
        registries=settings,
        digest=content_digest(content),
        job_digests={job.name: job_digest(job) for job in jobs},
        origins=origins,
    )


#: Job keys that say when a job runs, not what a run copies: left out of a job's digest.
WHEN_KEYS = ("schedule", "interval")


def canonical_job(job: SyncJob) -> dict[str, Any]:
    """A job's canonical JSON form (``referrers`` always as rules)."""
    form = job.model_dump(mode="json", by_alias=True)
    form["referrers"] = job.referrer_rules.model_dump(mode="json", by_alias=True)
    return form


def job_digest(job: SyncJob) -> str:
    """``sha256:<hex>`` of what a run of ``job`` copies: its canonical form without :data:`WHEN_KEYS`."""
    form = canonical_job(job)
    for key in WHEN_KEYS:
        del form[key]
    return content_digest(form)


def content_digest(content: Any) -> str:
    """``sha256:<hex>`` of ``content`` as canonical JSON (sorted keys, no blanks)."""
    text = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return "sha256:" + hashlib.sha256(text.encode("ascii")).hexdigest()


__all__ = [
    "CatalogSource",
    "ConfigError",
    "CredentialSettings",
    "JobSettings",
    "PruneRules",
    "ReferrerRules",
    "RegistryLimits",
    "RegistryOrigin",
    "RegistrySettings",
    "SyncConfig",
    "SyncJob",
    "TagRules",
    "canonical_job",
    "content_digest",
    "job_digest",
    "load_config",
    "parse_config",
    "read_credentials",
]
