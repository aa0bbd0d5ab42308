"""Configuration problems in words: pydantic errors translated, and the checks across keys.

:func:`translate` turns a pydantic :class:`~pydantic.ValidationError` into
``(key path, message)`` pairs whose messages say what is allowed
(``must be at least 1 (got 0)``, ``unknown key 'schedul' (did you mean
'schedule'?); allowed: ...``, ``must be a string: write it in quotes ('1.10')
so YAML keeps it as written``).  A value under ``credentials`` is never part of
a message.

:func:`check_registry` and :func:`check_job` find what a single key cannot
show: contradictory keys (``schedule`` with ``interval``, ``backup`` with
``overwrite: never``), gates that could never pass (``require`` with referrers
off or filtered out), destinations that collapse every repository into one or
copy a repository onto itself, and entries listed twice.  Paths are relative to
the registry entry or the job.
"""

from __future__ import annotations

import difflib
import fnmatch
import types
import typing
from collections.abc import Callable, Iterable
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from replicator.errors import ConfigError
from replicator.sync import mapping
from replicator.sync.config_schema import (
    CATALOG,
    NO_CATALOG,
    REPOSITORY,
    RULES,
    UNION_TAGS,
    CatalogSource,
    ReferrerRules,
    RegistrySettings,
    SyncJob,
    allowed_keys,
)
from replicator.sync.yamlsource import KeyPath, YamlDocument, quoted

#: A key path relative to the model being validated.
RelPath = tuple[str | int, ...]
Found = list[tuple[RelPath, str]]

_TAGGED: dict[str, type[BaseModel]] = {RULES: ReferrerRules, CATALOG: CatalogSource}
_MAPPING_TYPES = frozenset({"dict_type", "model_type", "model_attributes_type"})
_LIST_TYPES = frozenset({"tuple_type", "list_type", "iterable_type", "set_type"})
_STRING_TYPES = frozenset({"string_type", "not_a_string"})
_YES_NO = frozenset({"yes", "no", "y", "n", "on", "off"})
_SIMPLE = {
    "int_type": "must be a whole number",
    "int_parsing": "must be a whole number",
    "int_from_float": "must be a whole number",
    "float_type": "must be a number",
    "none_required": "must be empty",
}
_REFERRERS_HINT = (
    "must be true, false or a mapping (enabled, artifact-types, exclude-artifact-types, depth)"
)
_SOURCE_HINT = (
    "must be a repository (host/path or ocidir://PATH) or a mapping with registry and repositories"
)


# --------------------------------------------------------------------------- translation


def translate(
    exc: ValidationError,
    model: type[BaseModel],
    doc: YamlDocument,
    to_path: Callable[[RelPath], KeyPath],
) -> Found:
    """``(relative key path, message)`` for every error of ``exc`` (raised by ``model``)."""
    found: Found = []
    errors = exc.errors(include_url=False)
    inner = [tuple(p for p in e["loc"] if p not in UNION_TAGS) for e in errors]
    for err, rel in zip(errors, inner, strict=True):
        raw = tuple(err["loc"])
        if err["type"] == "too_short" and any(
            len(o) > len(rel) and o[: len(rel)] == rel for o in inner
        ):
            continue  # a list emptied by its items' own errors: those say what is wrong
        full = to_path(rel)
        found.append((rel, _message(err, raw, model, doc.texts.get(full), "credentials" in full)))
    return found


def _message(
    err: ErrorDetails, raw: RelPath, model: type[BaseModel], text: str | None, secret: bool
) -> str:
    kind = err["type"]
    ctx = err.get("ctx") or {}
    shown = "" if secret else f" (got {err.get('input')!r})"
    if raw and raw[-1] == RULES and kind in _MAPPING_TYPES:
        return _REFERRERS_HINT + _yes_no(err.get("input"))
    if raw and raw[-1] == REPOSITORY and kind in _STRING_TYPES:
        return _SOURCE_HINT
    if kind == "missing":
        return _missing(raw)
    if kind == "extra_forbidden":
        return _unknown_key(model, raw)
    if kind in _STRING_TYPES:
        if text is not None and not secret:
            return f"must be a string: write it in quotes ('{text}') so YAML keeps it as written"
        return "must be a string"
    if kind in _MAPPING_TYPES:
        return "must be a mapping (key: value)"
    if kind in _LIST_TYPES:
        return "must be a list ([a, b] or one '- item' per line)"
    if kind == "bool_type":
        return "must be true or false" + _yes_no(err.get("input"))
    if kind in _SIMPLE:
        return _SIMPLE[kind]
    if kind == "greater_than_equal":
        return f"must be at least {ctx.get('ge')}{shown}"
    if kind == "greater_than":
        return f"must be above {ctx.get('gt')}{shown}"
    if kind == "too_short":
        return "must not be empty" if ctx.get("min_length") == 1 else str(err["msg"])
    if kind == "literal_error":
        return f"must be {ctx.get('expected')}{shown}"
    if kind == "value_error" and "error" in ctx:
        return str(ctx["error"])
    return str(err["msg"])


def _yes_no(value: Any) -> str:
    """A hint for ``yes``/``no``/``on``/``off``, which YAML 1.2 reads as text."""
    if isinstance(value, str) and value.lower() in _YES_NO:
        return f" (YAML 1.2 reads {value!r} as text: write true or false)"
    return ""


def _missing(raw: RelPath) -> str:
    if raw == ("version",):
        return "required: write 'version: 1'"
    if raw in (("source",), ("destinations",)):
        return "required (in the job or in defaults)"
    return "required"


def _unknown_key(model: type[BaseModel], raw: RelPath) -> str:
    key = str(raw[-1]) if raw else ""
    parent = _model_at(model, raw[:-1])
    if parent is None:
        return f"unknown key {quoted(key)}"
    allowed = allowed_keys(parent)
    close = difflib.get_close_matches(key.replace("_", "-"), allowed, n=1, cutoff=0.6)
    hint = f" (did you mean {quoted(close[0])}?)" if close else ""
    return f"unknown key {quoted(key)}{hint}; allowed: {', '.join(allowed)}"


def _model_at(model: type[BaseModel], loc: RelPath) -> type[BaseModel] | None:
    """The model class validating the mapping at ``loc`` (union tags included), or None."""
    current: Any = model
    for part in loc:
        current = _unwrap(current)
        if isinstance(part, str) and part in _TAGGED:
            current = _TAGGED[part]
        elif isinstance(current, type) and issubclass(current, BaseModel):
            fields = {f.alias or n: f for n, f in current.model_fields.items()}
            if part not in fields:
                return None
            current = fields[str(part)].annotation
        else:
            args = typing.get_args(current)
            if not args:
                return None
            current = args[0] if isinstance(part, int) else args[-1]
    current = _unwrap(current)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return current
    return None


def _unwrap(tp: Any) -> Any:
    """Strip ``Annotated`` and an optional ``None`` from a type."""
    while True:
        origin = typing.get_origin(tp)
        if origin is typing.Annotated:
            tp = typing.get_args(tp)[0]
        elif origin in (typing.Union, types.UnionType):
            members = [a for a in typing.get_args(tp) if a is not type(None)]
            if len(members) != 1:
                return tp
            tp = members[0]
        else:
            return tp


# --------------------------------------------------------------------------- cross-key checks


def check_registry(settings: RegistrySettings) -> Found:
    """Contradictions inside one registry entry (credentials sources, TLS with a CA file)."""
    found: Found = []
    creds = settings.credentials
    if creds is not None:
        if creds.username is None and creds.username_env is None:
            found.append((("credentials",), "needs a user name: username or username-env"))
        elif creds.username is not None and creds.username_env is not None:
            found.append(
                (("credentials", "username-env"), "give username or username-env, not both")
            )
        if creds.password_env is None and creds.password_file is None:
            found.append((("credentials",), "needs a password: password-env or password-file"))
        elif creds.password_env is not None and creds.password_file is not None:
            found.append(
                (("credentials", "password-file"), "give password-env or password-file, not both")
            )
    if settings.ca_file is not None and settings.tls == "plain-http":
        found.append((("ca-file",), "a CA bundle is for TLS: it cannot go with tls: plain-http"))
    if settings.ca_file is not None and settings.tls == "insecure":
        found.append((("ca-file",), "tls: insecure skips verification, so a ca-file has no effect"))
    return found


def check_job(job: SyncJob) -> Found:
    """Everything wrong with a validated job that no single key shows."""
    found: Found = []
    if job.schedule is not None and job.interval is not None:
        found.append((("interval",), "schedule and interval exclude each other: give one"))
    if job.backup is not None and job.overwrite == "never":
        found.append((("backup",), "has no effect with overwrite: never (tags never move)"))
    found += _referrer_checks(job)
    found += _destination_checks(job)
    found += _listed_twice(("tags", "allow"), (p.pattern for p in job.tags.allow))
    found += _listed_twice(("tags", "deny"), (p.pattern for p in job.tags.deny))
    found += _listed_twice(("tags", "include"), job.tags.include)
    found += _listed_twice(("tags", "immutable"), job.tags.immutable)
    found += _listed_twice(("require",), job.require)
    found += _listed_twice(("platforms",), (str(p) for p in job.platforms))
    if isinstance(job.source, CatalogSource):
        found += _listed_twice(("source", "repositories"), job.source.repositories)
        found += _catalog_checks(job.source)
    return found


def _referrer_checks(job: SyncJob) -> Found:
    rules = job.referrer_rules
    if not rules.enabled:
        found: Found = []
        if rules.artifact_types or rules.exclude_artifact_types or rules.depth is not None:
            found.append(
                (
                    ("referrers",),
                    "artifact-types, exclude-artifact-types and depth mean nothing with "
                    "referrers off",
                )
            )
        if job.require:
            found.append((("require",), "needs referrers, which are off: no graph could pass"))
        return found
    found = []
    for i, kind in enumerate(job.require):
        if rules.artifact_types and not any(
            fnmatch.fnmatchcase(kind, g) for g in rules.artifact_types
        ):
            found.append(
                (
                    ("require", i),
                    f"{quoted(kind)} is not in referrers.artifact-types: no graph could pass",
                )
            )
        elif any(fnmatch.fnmatchcase(kind, g) for g in rules.exclude_artifact_types):
            found.append(
                (
                    ("require", i),
                    f"{quoted(kind)} is excluded by referrers.exclude-artifact-types: no graph could pass",
                )
            )
    return found


def _catalog_checks(source: CatalogSource) -> Found:
    found: Found = []
    if source.registry in NO_CATALOG:
        found.append(
            (
                ("source", "registry"),
                "Docker Hub does not list its repositories: name each repository as a source",
            )
        )
    if source.repositories and source.repositories[0].startswith("!"):
        found.append(
            (
                ("source", "repositories", 0),
                "the first pattern must select: a leading '!pattern' excludes from nothing",
            )
        )
    return found


def _destination_checks(job: SyncJob) -> Found:
    found: Found = []
    catalog = isinstance(job.source, CatalogSource)
    repository = mapping.SAMPLE_REPOSITORY if catalog else job.source_reference().repository
    source = job.source_reference(repository if catalog else None)
    first: dict[tuple[str, str], int] = {}
    for i, template in enumerate(job.destinations):
        path: RelPath = ("destinations", i)
        fields = mapping.uses_fields(template)
        if catalog and not fields and not mapping.is_shared_layout(template):
            found.append(
                (
                    path,
                    "a catalog source needs {repository} or {name} in a registry destination: "
                    "without it every repository lands in one",
                )
            )
            continue
        try:
            ref = mapping.map_destination(template, repository)
        except ConfigError as exc:
            found.append((path, exc.message))
            continue
        key = mapping.destination_key(ref)
        if mapping.same_repository(ref, source):
            found.append((path, "is the source itself"))
        elif key in first:
            found.append((path, f"the same destination as destinations[{first[key]}]"))
        first.setdefault(key, i)
    return found


def _listed_twice(path: RelPath, values: Iterable[str]) -> Found:
    found: Found = []
    first: dict[str, int] = {}
    for i, value in enumerate(values):
        if value in first:
            found.append(((*path, i), f"{value!r} is listed twice (first at index {first[value]})"))
        first.setdefault(value, i)
    return found
