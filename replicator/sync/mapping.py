"""Where a source repository goes: destination templates and backup tags.

A destination of a sync job is a *template* of a repository reference:

* ``{repository}`` stands for the source repository's path (``team/api``) and
  ``{name}`` for its last element (``api``); no other field exists, and fields
  may appear only in the repository path of a registry reference (never in the
  host) or anywhere in an ``ocidir://`` path;
* ``prod.example.com/mirror/{repository}`` is one registry repository per
  source repository; ``prod.example.com/team/api`` (no field) is that one
  repository;
* ``ocidir://PATH`` without a field is **one shared OCI layout** holding every
  repository under its full name: its tags are stored as
  ``<repository>:<tag>`` in ``ref.name`` (see
  :mod:`replicator.targets.ocilayout`); the mapped
  :class:`~replicator.oci.reference.Reference` then carries the source
  repository in ``repository`` (an ``ocidir://`` reference parsed from text
  always has ``""`` there);
* ``ocidir://PATH/{name}`` (a field in the path) is one layout per repository,
  holding plain tags (``ref.name`` = ``v1``), as ``copy`` writes them.

A backup template (``{tag}-previous``) names the tag under which a destination
tag's old digest is kept before the tag moves; ``{tag}`` is its only field and
is required.

All functions are pure.  Template problems raise :class:`ValueError` with a
message meant for a configuration error (the caller adds file, line and key);
mapping a repository raises :class:`~replicator.errors.ConfigError`.
"""

from __future__ import annotations

import os
import string
from collections.abc import Iterable, Sequence
from dataclasses import replace

from replicator.errors import ConfigError, ReferenceError
from replicator.oci.reference import (
    OCIDIR_SCHEME,
    TAG_RE,
    Reference,
    parse_repository,
)
from replicator.sync.yamlsource import quoted

#: The fields a destination template may use.
DESTINATION_FIELDS = ("repository", "name")
#: The field a backup template must use.
BACKUP_FIELDS = ("tag",)
#: The repository used to check a destination template of a catalog source.
SAMPLE_REPOSITORY = "sample/repository"
#: The tag used to check a backup template.
SAMPLE_TAG = "v1.2.3"


def template_fields(template: str, allowed: Sequence[str]) -> tuple[str, ...]:
    """The fields ``template`` uses, in order; ValueError for any other field or bad braces.

    ``{{`` and ``}}`` are literal braces (which no reference allows, so they
    fail later); ``{}``, ``{0}``, ``{quoted(repository)}`` and ``{repository:>9}``
    are refused.
    """
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ValueError(f"malformed template {quoted(template)}: {exc}") from None
    found: list[str] = []
    expected = ", ".join("{" + f + "}" for f in allowed)
    for _literal, field, spec, conversion in parts:
        if field is None:
            continue
        if field not in allowed:
            shown = "{" + field + "}"
            raise ValueError(
                f"unknown template field {shown} in {quoted(template)}: allowed: {expected}"
            )
        if spec or conversion:
            raise ValueError(
                f"template field {{{field}}} in {quoted(template)} takes no format or conversion"
            )
        found.append(field)
    return tuple(found)


def _render(template: str, repository: str) -> str:
    name = repository.rsplit("/", 1)[-1]
    return template.format(repository=repository, name=name)


def check_destination_template(
    template: str, *, base_dir: str | os.PathLike[str] | None = None
) -> str:
    """Validate a destination template; return it with a relative layout path made absolute.

    A relative ``ocidir://`` path is taken relative to ``base_dir`` (the
    configuration file's directory) and ``~`` is expanded, so the job means the
    same whatever the working directory.  Raises ValueError saying what is wrong.
    """
    if not isinstance(template, str) or not template:
        raise ValueError("must be a repository: host/path or ocidir://PATH")
    fields = template_fields(template, DESTINATION_FIELDS)
    template = absolute_layout(template, base_dir)
    if not template.startswith(OCIDIR_SCHEME) and fields and "{" in template.split("/", 1)[0]:
        raise ValueError(
            f"{quoted(template)}: template fields belong in the repository path, not the host"
        )
    try:
        parse_repository(_render(template, SAMPLE_REPOSITORY))
    except ReferenceError as exc:
        if fields:
            raise ValueError(f"{exc} (with {{repository}} = {quoted(SAMPLE_REPOSITORY)})") from None
        raise ValueError(str(exc)) from None
    return template


def absolute_layout(text: str, base_dir: str | os.PathLike[str] | None) -> str:
    """``text`` with a relative ``ocidir://`` path joined to ``base_dir`` (``~`` expanded).

    Anything that is not an ``ocidir://`` reference is returned unchanged.
    """
    if not text.startswith(OCIDIR_SCHEME):
        return text
    path = os.path.expanduser(text[len(OCIDIR_SCHEME) :])
    if path and not os.path.isabs(path) and base_dir is not None:
        path = os.path.normpath(os.path.join(base_dir, path))
    return OCIDIR_SCHEME + path


def is_shared_layout(template: str) -> bool:
    """True for ``ocidir://PATH`` without fields: one layout holding every repository."""
    return template.startswith(OCIDIR_SCHEME) and not template_fields(template, DESTINATION_FIELDS)


def uses_fields(template: str) -> bool:
    """True when the template names ``{repository}`` or ``{name}``."""
    return bool(template_fields(template, DESTINATION_FIELDS))


def map_destination(template: str, repository: str) -> Reference:
    """The destination repository ``template`` gives for the source ``repository``.

    Returns a parsed repository reference without tag.  For a shared layout the
    reference's ``repository`` is ``repository`` (tags stored as
    ``<repository>:<tag>``).  Raises :class:`ConfigError` when the rendered
    reference is not valid (too long, say), naming template and repository.
    """
    fields = template_fields(template, DESTINATION_FIELDS)
    if fields and not repository:
        raise ConfigError(
            f"destination {quoted(template)} uses {{{fields[0]}}} but the source has no "
            "repository name (an ocidir:// layout)"
        )
    try:
        ref = parse_repository(_render(template, repository) if fields else template)
    except ReferenceError as exc:
        raise ConfigError(
            f"destination {quoted(template)} for repository {quoted(repository)}: {exc}"
        ) from None
    if ref.scheme == "ocidir" and not fields:
        return replace(ref, repository=repository)
    return ref


def map_destinations(templates: Iterable[str], repository: str) -> tuple[Reference, ...]:
    """:func:`map_destination` of every template, in order."""
    return tuple(map_destination(t, repository) for t in templates)


def destination_key(ref: Reference) -> tuple[str, str]:
    """What makes two destinations the same: location and repository inside it."""
    return ref.location, ref.repository


def map_repositories(
    templates: Sequence[str], repositories: Iterable[str]
) -> dict[str, tuple[Reference, ...]]:
    """The destinations of every source repository, refusing two that land in one.

    Two source repositories mapped to the same destination repository (say
    ``a/api`` and ``b/api`` through ``{name}``) would overwrite each other's
    tags: that is a :class:`ConfigError` naming both and the template.
    """
    out: dict[str, tuple[Reference, ...]] = {}
    owner: dict[tuple[str, str], tuple[str, str]] = {}
    for repository in repositories:
        refs = map_destinations(templates, repository)
        for template, ref in zip(templates, refs, strict=True):
            key = destination_key(ref)
            other = owner.get(key)
            if other is not None and other[0] != repository:
                raise ConfigError(
                    f"repositories {quoted(other[0])} and {quoted(repository)} both map to "
                    f"{describe_destination(ref)} (through {quoted(template)}): use {{repository}} "
                    "rather than {name}, or exclude one of them"
                )
            owner[key] = (repository, template)
        out[repository] = refs
    return out


def describe_destination(ref: Reference, tag: str | None = None) -> str:
    """A destination for messages: the reference, plus the repository inside a shared layout."""
    if ref.scheme == "ocidir" and ref.repository:
        inner = f"{ref.repository}:{tag}" if tag else ref.repository
        return f"{ref.without_tag_or_digest()} ({inner})"
    return str(ref.with_tag(tag) if tag else ref)


def check_backup_template(template: str) -> str:
    """Validate a backup tag template: ``{tag}`` required, the result a valid tag."""
    if not isinstance(template, str) or not template:
        raise ValueError("must be a tag template such as '{tag}-previous'")
    if "tag" not in template_fields(template, BACKUP_FIELDS):
        raise ValueError(
            f"{quoted(template)} must contain {{tag}}: otherwise every tag backs up into one"
        )
    rendered = template.format(tag=SAMPLE_TAG)
    if not TAG_RE.fullmatch(rendered):
        raise ValueError(
            f"{quoted(template)} does not give a valid tag (for {quoted(SAMPLE_TAG)}: {quoted(rendered)}); "
            "tags are letters, digits, '_', '.' and '-', not starting with '.' or '-'"
        )
    return template


def backup_tag(template: str, tag: str) -> str:
    """The backup tag of ``tag``; :class:`ConfigError` when the result is not a valid tag."""
    rendered = template.format(tag=tag)
    if not TAG_RE.fullmatch(rendered):
        raise ConfigError(
            f"backup {quoted(template)} gives {quoted(rendered[:140])} for tag {quoted(tag)}: not a valid tag "
            "(at most 128 characters)"
        )
    return rendered


def same_repository(a: Reference, b: Reference) -> bool:
    """True when two repository references name the same repository of the same store."""
    return destination_key(a) == destination_key(b)


__all__ = [
    "BACKUP_FIELDS",
    "DESTINATION_FIELDS",
    "absolute_layout",
    "backup_tag",
    "check_backup_template",
    "check_destination_template",
    "describe_destination",
    "destination_key",
    "is_shared_layout",
    "map_destination",
    "map_destinations",
    "map_repositories",
    "same_repository",
    "template_fields",
    "uses_fields",
]
