"""The sync configuration's schema: pydantic models of every section, with parsed values.

The models are the typed objects a loaded configuration hands out
(:mod:`replicator.sync.config` loads and cascades them): a regular expression
is a compiled :class:`re.Pattern`, a semver range a ``semantic_version.NpmSpec``,
a platform a :class:`~replicator.oci.descriptor.Platform`, an interval a
:class:`~datetime.timedelta`, a size an ``int`` of bytes.  Keys are kebab-case
(``password-env``); unknown keys are errors; every model is frozen.  Dumped with
``model_dump(mode="json", by_alias=True)`` a model gives its canonical form
(patterns and ranges as their text, intervals in seconds), which the
configuration digest is computed from.

Value parsers raise :class:`ValueError` with a message meant for the user; the
loader adds file, line and key path.  Paths in the file (``ca-file``,
``password-file``, ``ocidir://`` destinations) are made absolute against the
``base_dir`` given in the validation context (the file's directory).
"""

from __future__ import annotations

import datetime
import os
import re
from typing import Annotated, Any, Literal

import durationpy
import semantic_version  # type: ignore[import-untyped]
from croniter import croniter  # type: ignore[import-untyped]
from pydantic import (
    BaseModel,
    ByteSize,
    ConfigDict,
    Discriminator,
    Field,
    PlainSerializer,
    PlainValidator,
    StrictBool,
    StrictInt,
    StrictStr,
    Tag,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
)
from pydantic_core import PydanticCustomError

from replicator.errors import InputError, ReferenceError
from replicator.graph.filters import GraphFilter
from replicator.oci.descriptor import Platform
from replicator.oci.reference import (
    DOCKER_HUB_REGISTRY,
    TAG_RE,
    Reference,
    normalise_host,
    parse_repository,
)
from replicator.sync import mapping, selection
from replicator.sync.yamlsource import quoted

#: Union tags (they appear in pydantic error locations and are dropped from key paths).
SWITCH, RULES, REPOSITORY, CATALOG = "<switch>", "<rules>", "<repository>", "<catalog>"
UNION_TAGS = frozenset({SWITCH, RULES, REPOSITORY, CATALOG})

_JOB_NAME_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
_ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_MEDIA_TYPE_RE = re.compile(r"[A-Za-z0-9][\w!#$&^.+-]*/[A-Za-z0-9][\w!#$&^.+-]*")
_CRON_MACROS = frozenset(
    {"@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly"}
)
_SIZE = TypeAdapter(ByteSize)


def _kebab(name: str) -> str:
    return name.replace("_", "-")


class _Model(BaseModel):
    model_config = ConfigDict(
        extra="forbid", frozen=True, alias_generator=_kebab, hide_input_in_errors=True
    )


# --------------------------------------------------------------------------- value parsers


def need_str(value: Any) -> str:
    """``value`` if it is a string, else the ``not_a_string`` error (the loader adds a hint)."""
    if not isinstance(value, str):
        raise PydanticCustomError("not_a_string", "must be a string")
    return value


def _regex(value: Any) -> re.Pattern[str]:
    if isinstance(value, re.Pattern):
        return value
    text = need_str(value)
    if not text:
        raise ValueError("empty regular expression")
    return selection.compile_tag_pattern(text)


def _semver(value: Any) -> semantic_version.NpmSpec:
    if isinstance(value, semantic_version.NpmSpec):
        return value
    return selection.parse_semver_range(need_str(value))


def _tag(value: Any) -> str:
    text = need_str(value)
    if not TAG_RE.fullmatch(text):
        raise ValueError(
            f"{quoted(text[:140])} is not a tag: letters, digits, '_', '.' and '-', "
            "at most 128, not starting with '.' or '-'"
        )
    if selection.is_digest_like(text):
        raise ValueError(f"{quoted(text)} is a digest-like tag: such tags are never selected")
    return text


def _tag_glob(value: Any) -> str:
    return selection.check_tag_glob(need_str(value))


def _repository_pattern(value: Any) -> str:
    return selection.check_repository_pattern(need_str(value))


def _platform(value: Any) -> Platform:
    if isinstance(value, Platform):
        return value
    try:
        return Platform.parse(need_str(value))
    except InputError as exc:
        raise ValueError(exc.message) from None


def _duration(value: Any) -> datetime.timedelta:
    if isinstance(value, datetime.timedelta) and value >= datetime.timedelta(seconds=1):
        return value
    text = need_str(value)
    try:
        delta = durationpy.from_str(text)
    except Exception:  # durationpy raises its own error types
        raise ValueError(f"{quoted(text)} is not a duration: write 30s, 10m, 1h or 1h30m") from None
    if delta < datetime.timedelta(seconds=1):
        raise ValueError(f"must be at least 1s (got {quoted(text)})")
    return delta


def _cron(value: Any) -> str:
    text = " ".join(need_str(value).split())
    if text in _CRON_MACROS:
        return text
    if len(text.split(" ")) != 5 or not croniter.is_valid(text):
        raise ValueError(
            f"{quoted(text)} is not a cron expression: five fields 'minute hour day-of-month "
            "month day-of-week' (such as '*/15 * * * *') or @hourly, @daily, @weekly, "
            "@monthly, @yearly"
        )
    return text


def _size(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise PydanticCustomError("not_a_string", "must be a size")
    try:
        size = int(_SIZE.validate_python(value))
    except ValidationError:
        size = -1
    if size <= 0:
        raise ValueError(
            f"{quoted(str(value))} is not a size above zero: write 50MiB, 1GiB, 500KB or a byte count"
        )
    return size


def _rate(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise PydanticCustomError("float_type", "must be a number")
    if not value > 0:
        raise ValueError(f"must be above 0 (got {value})")
    return float(value)


def _env_name(value: Any) -> str:
    text = need_str(value)
    if not _ENV_NAME_RE.fullmatch(text):
        raise ValueError("must name an environment variable (letters, digits, '_')")
    return text


def _path(value: Any, info: ValidationInfo) -> str:
    text = need_str(value)
    if not text:
        raise ValueError("empty path")
    path = os.path.expanduser(text)
    base = (info.context or {}).get("base_dir")
    if not os.path.isabs(path) and base is not None:
        path = os.path.join(base, path)
    return os.path.normpath(path)


def registry_host(value: Any) -> str:
    """A registry host key normalised (``docker.io`` → ``registry-1.docker.io``); ValueError if bad."""
    text = need_str(value)
    if text.startswith("ocidir://"):
        raise ValueError("an OCI layout has no registry settings: name a host[:port]")
    try:
        return normalise_host(text)
    except ReferenceError as exc:
        raise ValueError(exc.message) from None


def _job_name(value: Any) -> str:
    text = need_str(value)
    if not _JOB_NAME_RE.fullmatch(text):
        raise ValueError(
            f"{quoted(text[:80])}: a job name is 1 to 63 lower-case letters, digits, '-' and '_', "
            "starting with a letter or digit (it names files and metric labels)"
        )
    return text


def _media_type(value: Any) -> str:
    text = need_str(value)
    if not _MEDIA_TYPE_RE.fullmatch(text):
        raise ValueError(f"{quoted(text[:120])} is not a media type (type/subtype)")
    return text


def _artifact_type_glob(value: Any) -> str:
    text = need_str(value)
    if not text or any(c.isspace() for c in text):
        raise ValueError("an artifact type glob is a media type or a glob over one, no spaces")
    return text


def _source_repository(value: Any, info: ValidationInfo) -> Reference:
    if isinstance(value, Reference):
        value = str(value)
    text = need_str(value)
    if "{" in text or "}" in text:
        raise ValueError("a source takes no template fields: {repository} is for destinations")
    text = mapping.absolute_layout(text, (info.context or {}).get("base_dir"))
    try:
        return parse_repository(text)
    except ReferenceError as exc:
        raise ValueError(
            f"{exc.message}; the source is a repository (host/path or ocidir://PATH, tags "
            "go under tags.include) or a mapping with registry and repositories"
        ) from None


def _destination(value: Any, info: ValidationInfo) -> str:
    base = (info.context or {}).get("base_dir")
    return mapping.check_destination_template(need_str(value), base_dir=base)


def _backup(value: Any) -> str:
    return mapping.check_backup_template(need_str(value))


Regex = Annotated[
    re.Pattern[str], PlainValidator(_regex), PlainSerializer(lambda p: p.pattern, return_type=str)
]
SemverRange = Annotated[
    semantic_version.NpmSpec,
    PlainValidator(_semver),
    PlainSerializer(lambda s: s.expression, return_type=str),
]
TagLiteral = Annotated[str, PlainValidator(_tag)]
TagGlob = Annotated[str, PlainValidator(_tag_glob)]
RepositoryPattern = Annotated[str, PlainValidator(_repository_pattern)]
PlatformSpec = Annotated[Platform, PlainValidator(_platform), PlainSerializer(str, return_type=str)]
Interval = Annotated[
    datetime.timedelta,
    PlainValidator(_duration),
    PlainSerializer(lambda d: d.total_seconds(), return_type=float),
]
CronExpression = Annotated[str, PlainValidator(_cron)]
Size = Annotated[int, PlainValidator(_size)]
Rate = Annotated[float, PlainValidator(_rate)]
EnvName = Annotated[str, PlainValidator(_env_name)]
FilePath = Annotated[str, PlainValidator(_path)]
JobName = Annotated[str, PlainValidator(_job_name)]
MediaType = Annotated[str, PlainValidator(_media_type)]
ArtifactTypeGlob = Annotated[str, PlainValidator(_artifact_type_glob)]
SourceRepository = Annotated[
    Reference, PlainValidator(_source_repository), PlainSerializer(str, return_type=str)
]
DestinationTemplate = Annotated[str, PlainValidator(_destination)]
BackupTemplate = Annotated[str, PlainValidator(_backup)]
Host = Annotated[str, PlainValidator(registry_host)]


# --------------------------------------------------------------------------- models


class TagRules(_Model):
    """Which tags of a source repository a job selects (see :mod:`replicator.sync.selection`)."""

    allow: tuple[Regex, ...] = ()
    deny: tuple[Regex, ...] = ()
    semver: SemverRange | None = None
    latest: StrictInt | None = Field(default=None, ge=1)
    include: tuple[TagLiteral, ...] = ()
    immutable: tuple[TagGlob, ...] = ()


class ReferrerRules(_Model):
    """Which referrers travel with a graph: all (the default), none, or filtered ones.

    ``referrers: true`` and ``referrers: false`` are short for ``{}`` and
    ``{enabled: false}``.  ``artifact-types`` / ``exclude-artifact-types`` are
    globs over a referrer's artifact type; ``depth`` the referrer levels followed.
    """

    enabled: StrictBool = True
    artifact_types: tuple[ArtifactTypeGlob, ...] = ()
    exclude_artifact_types: tuple[ArtifactTypeGlob, ...] = ()
    depth: StrictInt | None = Field(default=None, ge=1)


def _referrers_from_switch(value: bool | ReferrerRules) -> ReferrerRules:
    if isinstance(value, ReferrerRules):
        return value
    return ReferrerRules(enabled=value)


Referrers = Annotated[
    Annotated[StrictBool, Tag(SWITCH)] | Annotated[ReferrerRules, Tag(RULES)],
    Discriminator(lambda v: SWITCH if isinstance(v, bool) else RULES),
]


class PruneRules(_Model):
    """Deletion propagation (used by a later mode): off by default, at most ``max`` per run."""

    enabled: StrictBool = False
    max: StrictInt = Field(default=10, ge=1)


class CatalogSource(_Model):
    """Every repository of a registry whose name the ordered globs select."""

    registry: Host
    repositories: tuple[RepositoryPattern, ...] = Field(min_length=1)


Source = Annotated[
    Annotated[SourceRepository, Tag(REPOSITORY)] | Annotated[CatalogSource, Tag(CATALOG)],
    Discriminator(lambda v: CATALOG if isinstance(v, dict | CatalogSource) else REPOSITORY),
]


class JobSettings(_Model):
    """The settings a job may take from ``defaults`` (everything but its name)."""

    tags: TagRules = TagRules()
    referrers: Referrers = True
    require: tuple[MediaType, ...] = ()
    platforms: tuple[PlatformSpec, ...] = ()
    overwrite: Literal["if-changed", "never", "always"] = "if-changed"
    backup: BackupTemplate | None = None
    schedule: CronExpression | None = None
    interval: Interval | None = None
    prune: PruneRules = PruneRules()

    @property
    def referrer_rules(self) -> ReferrerRules:
        """``referrers`` as rules, ``true``/``false`` expanded."""
        return _referrers_from_switch(self.referrers)


class JobDefaults(JobSettings):
    """The ``defaults`` section: any job key but ``name``."""

    source: Source | None = None
    destinations: tuple[DestinationTemplate, ...] | None = Field(default=None, min_length=1)


class SyncJob(JobSettings):
    """One job with its effective settings (the job's own keys over ``defaults``)."""

    name: JobName
    source: Source
    destinations: tuple[DestinationTemplate, ...] = Field(min_length=1)

    @property
    def is_catalog(self) -> bool:
        """True when the source is a registry's catalog filtered by globs."""
        return isinstance(self.source, CatalogSource)

    @property
    def source_location(self) -> str:
        """The source's registry host or ``ocidir://PATH``."""
        if isinstance(self.source, CatalogSource):
            return self.source.registry
        return self.source.location

    def source_reference(self, repository: str | None = None) -> Reference:
        """The source repository reference: the job's own, or ``repository`` of its catalog."""
        if isinstance(self.source, CatalogSource):
            if repository is None:
                raise ValueError("a catalog source needs the repository name")
            return parse_repository(f"{self.source.registry}/{repository}")
        return self.source

    def destinations_for(self, repository: str) -> tuple[Reference, ...]:
        """The destination repositories of the source ``repository`` (see :mod:`.mapping`)."""
        return mapping.map_destinations(self.destinations, repository)

    def graph_filter(self) -> GraphFilter:
        """The engine's graph selection for this job: referrers, depth, types, platforms."""
        rules = self.referrer_rules
        return GraphFilter(
            referrers=rules.enabled,
            max_depth=rules.depth,
            include_types=rules.artifact_types,
            exclude_types=rules.exclude_artifact_types,
            platforms=self.platforms,
        )


class CredentialSettings(_Model):
    """Where a registry's credentials come from: environment variables or a file, never inline."""

    username: StrictStr | None = None
    username_env: EnvName | None = None
    password_env: EnvName | None = None
    password_file: FilePath | None = None


class RegistryLimits(_Model):
    """Per-host limits: connections, request rate, bandwidth (bytes/s), quota floor."""

    concurrency: StrictInt | None = Field(default=None, ge=1)
    requests_per_second: Rate | None = None
    bandwidth: Size | None = None
    min_remaining: StrictInt | None = Field(default=None, ge=0)


class RegistrySettings(_Model):
    """How to reach one registry host: credentials, TLS, CA bundle, limits."""

    credentials: CredentialSettings | None = None
    tls: Literal["verify", "insecure", "plain-http"] | None = None
    ca_file: FilePath | None = None
    limits: RegistryLimits = RegistryLimits()


class Document(_Model):
    """The top level; ``defaults`` and ``jobs`` stay raw here (they cascade before validation)."""

    version: Literal[1]
    defaults: dict[str, Any] | None = None
    registries: dict[str, dict[str, Any]] | None = None
    jobs: list[dict[str, Any]] = Field(min_length=1)


#: Registries whose catalog cannot be listed.
NO_CATALOG = frozenset({DOCKER_HUB_REGISTRY})
#: Allowed keys of each model, for "unknown key" messages.
ALLOWED_KEYS: dict[type[BaseModel], tuple[str, ...]] = {}


def allowed_keys(model: type[BaseModel]) -> tuple[str, ...]:
    """The keys ``model`` accepts, as written in YAML."""
    keys = ALLOWED_KEYS.get(model)
    if keys is None:
        keys = tuple(f.alias or n for n, f in model.model_fields.items())
        ALLOWED_KEYS[model] = keys
    return keys


__all__ = [
    "CatalogSource",
    "CredentialSettings",
    "Document",
    "JobDefaults",
    "JobSettings",
    "PruneRules",
    "ReferrerRules",
    "RegistryLimits",
    "RegistrySettings",
    "SyncJob",
    "TagRules",
    "allowed_keys",
    "need_str",
]
