"""References: ``host[:port]/path[:tag][@digest]`` and ``ocidir://PATH[:TAG|@DIGEST]``.

Pure parsing and formatting, no I/O.  The registry grammar is the one of the
distribution reference package:

* the first ``/``-separated component is a host when it contains ``.`` or ``:``,
  is ``localhost`` or is a bracketed IPv6 literal; host names are
  case-insensitive and kept in lower case;
* every path component matches ``[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*`` and
  the whole repository is at most 255 characters;
* a tag matches ``[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}``;
* a digest is ``alg:hex`` of a registered algorithm (sha256, sha512).

A name without a host goes to Docker Hub: ``alpine`` is the repository
``library/alpine`` at ``registry-1.docker.io``, displayed as
``docker.io/library/alpine``.

A reference that names only a registry (``127.0.0.1:5000``, ``localhost:5000``,
``registry.example.com``: a bare name with a dot, ``localhost`` or an IPv6
literal, with or without a port) is refused with a hint at the missing
repository path rather than read as a Docker Hub repository.

Every malformed reference raises :class:`replicator.errors.ReferenceError` with
one message naming what is wrong; nothing else escapes the parsers.
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass, replace
from typing import Literal

from replicator.errors import InputError, ReferenceError
from replicator.oci.descriptor import validate_digest

DOCKER_HUB_REGISTRY = "registry-1.docker.io"
DOCKER_HUB_DISPLAY = "docker.io"
DOCKER_HUB_ALIASES: frozenset[str] = frozenset(
    {DOCKER_HUB_DISPLAY, "index.docker.io", DOCKER_HUB_REGISTRY}
)
DOCKER_HUB_OFFICIAL_PREFIX = "library/"

OCIDIR_SCHEME = "ocidir://"

MAX_REPOSITORY_LENGTH = 255
MAX_TAG_LENGTH = 128

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
#: A tag, as the distribution spec defines it (anchored: match, search and fullmatch agree).
TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}\Z")
#: One path component of a repository name (anchored).
PATH_COMPONENT_RE = re.compile(rf"^{_COMPONENT}\Z")
#: A repository name: path components separated by ``/`` (anchored; length checked apart).
REPOSITORY_RE = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*\Z")

_DOMAIN_LABEL = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN_NAME = rf"{_DOMAIN_LABEL}(?:\.{_DOMAIN_LABEL})*"
_IPV6 = r"\[[0-9a-fA-F:.]+\]"
_HOST_RE = re.compile(rf"(?P<host>{_DOMAIN_NAME}|{_IPV6})(?::(?P<port>[0-9]+))?")

_GENERIC_DIGEST_RE = re.compile(r"[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]+")
_REFERRERS_TAG_RE = re.compile(r"[a-z0-9]+(?:[._-][a-z0-9]+)*-[a-f0-9]{64}")
_NOT_TAG_CHARS = re.compile(r"[^A-Za-z0-9_.-]")
_USERINFO_RE = re.compile(r"^((?:[a-zA-Z][a-zA-Z0-9+.-]*://)?)[^/@]*:[^/@]*@")
_MAX_SHOWN = 200


def _shown(text: str) -> str:
    """The reference as quoted in an error message: no credentials, printable, clipped."""
    text = _USERINFO_RE.sub(r"\1***@", text)
    if not text.isprintable():
        text = text.encode("unicode_escape").decode("ascii")
    if len(text) > _MAX_SHOWN:
        text = text[: _MAX_SHOWN - 1] + "…"
    return text


def _invalid(text: str, why: str) -> ReferenceError:
    return ReferenceError(f'invalid reference "{_shown(text)}": {why}')


@dataclass(frozen=True, slots=True)
class Reference:
    """A parsed, normalised reference to a repository, tag or digest.

    ``registry`` is the host requests go to (``registry-1.docker.io`` for Docker
    Hub, ``""`` for an OCI layout); ``repository`` is the normalised name
    (``library/alpine``); ``tag`` and ``digest`` may both be set, in which case
    the digest is what :attr:`reference` resolves to.  ``str()`` gives the
    display form, which :func:`parse_reference` reads back to an equal value.
    """

    scheme: Literal["registry", "ocidir"]
    registry: str
    repository: str
    tag: str | None
    digest: str | None
    layout_path: str | None = None

    @property
    def display_registry(self) -> str:
        """The registry as users know it: ``docker.io`` for Docker Hub, else the host."""
        if self.registry == DOCKER_HUB_REGISTRY:
            return DOCKER_HUB_DISPLAY
        return self.registry

    @property
    def reference(self) -> str:
        """What a manifest request names: the digest if set, else the tag, else ``latest``."""
        return self.digest or self.tag or "latest"

    @property
    def location(self) -> str:
        """The key of the target holding this reference: a host or ``ocidir://<path>``."""
        if self.scheme == "ocidir":
            return f"{OCIDIR_SCHEME}{self.layout_path}"
        return self.registry

    @property
    def is_docker_hub(self) -> bool:
        """True when the reference points at Docker Hub."""
        return self.scheme == "registry" and self.registry == DOCKER_HUB_REGISTRY

    @property
    def repository_display(self) -> str:
        """Registry and repository without tag or digest (``docker.io/library/alpine``)."""
        if self.scheme == "ocidir":
            return f"{OCIDIR_SCHEME}{_path_for_display(self.layout_path or '', True)}"
        return f"{self.display_registry}/{self.repository}"

    def with_tag(self, tag: str) -> Reference:
        """The same repository at ``tag`` (the digest is dropped); ``tag`` is validated."""
        _check_tag(tag, tag)
        return replace(self, tag=tag, digest=None)

    def with_digest(self, digest: str) -> Reference:
        """The same repository pinned to ``digest`` (the tag is kept for display)."""
        _check_digest(digest, digest)
        return replace(self, digest=digest)

    def without_tag_or_digest(self) -> Reference:
        """The bare repository."""
        return replace(self, tag=None, digest=None)

    def __str__(self) -> str:
        if self.scheme == "ocidir":
            base = f"{OCIDIR_SCHEME}{_path_for_display(self.layout_path or '', self.tag is None)}"
        else:
            base = f"{self.display_registry}/{self.repository}"
        if self.tag:
            base += f":{self.tag}"
        if self.digest:
            base += f"@{self.digest}"
        return base


def _path_for_display(path: str, no_tag: bool) -> str:
    # A path whose last component looks like "name:tag" would be read back with a
    # tag; a trailing slash keeps it a path.
    if no_tag and _split_ocidir_tag(path)[1] is not None:
        return path + "/"
    return path


def _split_ocidir_tag(text: str) -> tuple[str, str | None]:
    """Split ``PATH:TAG`` when the text after the last ``:`` is a valid tag without ``/``."""
    head, tag = _split_tag_suffix(text)
    if tag is None or not TAG_RE.fullmatch(tag):
        return text, None
    return head, tag


def _split_tag_suffix(text: str) -> tuple[str, str | None]:
    """Split ``name:tag`` at the last ``:`` when no ``/`` follows it."""
    head, sep, tail = text.rpartition(":")
    if not sep or "/" in tail:
        return text, None
    return head, tail


def _check_tag(text: str, tag: str) -> None:
    if not tag:
        raise _invalid(text, "empty tag")
    if len(tag) > MAX_TAG_LENGTH:
        raise _invalid(text, f"tag is longer than {MAX_TAG_LENGTH} characters")
    if not TAG_RE.fullmatch(tag):
        raise _invalid(
            text,
            f"invalid tag {tag!r}: tags are letters, digits, '_', '.' and '-', "
            "and do not start with '.' or '-'",
        )


def _check_digest(text: str, digest: str) -> None:
    if not digest:
        raise _invalid(text, "empty digest")
    try:
        validate_digest(digest)
    except InputError as exc:
        raise _invalid(text, exc.message) from None


def _normalise_host(text: str, host: str) -> str:
    m = _HOST_RE.fullmatch(host)
    if m is None:
        raise _invalid(text, f"invalid registry host {host!r}")
    port = m.group("port")
    if port is not None and not 0 < int(port) <= 65535:
        raise _invalid(text, f"invalid port {port!r} in registry host")
    return host.lower()


def _looks_like_host(component: str) -> bool:
    return (
        "." in component
        or ":" in component
        or component.lower() == "localhost"
        or component.startswith("[")
    )


def _bare_registry(name: str) -> tuple[str, str | None] | None:
    """``(host, tag)`` when ``name`` (a reference without its digest) names only a registry.

    ``127.0.0.1:5000``, ``localhost:5000``, ``[::1]``, ``registry.example.com``,
    ``registry.example.com:v1`` (a tag after a bare host) and ``localhost:5000/``
    do; ``alpine``, ``alpine:3`` and ``myhost:5000`` (Docker Hub's
    ``library/myhost`` at tag ``5000``) do not.  A bare name with a dot is never
    taken for a Docker Hub repository: official images have no dots and every
    other Docker Hub repository has a ``/``.
    """
    candidate = name[:-1] if name.endswith("/") else name
    if not candidate or "/" in candidate:
        return None
    m = _HOST_RE.fullmatch(candidate)
    if m is not None and _names_a_host(m.group("host")):
        return candidate, None
    head, tag = _split_tag_suffix(candidate)
    if tag is not None:
        m = _HOST_RE.fullmatch(head)
        if m is not None and m.group("port") is None and _names_a_host(m.group("host")):
            return head, tag
    return None


def _names_a_host(host: str) -> bool:
    """True for a host name that cannot be a one-component Docker Hub repository."""
    return "." in host or host.lower() == "localhost" or host.startswith("[")


def _registry_only(text: str, host: str, tag: str | None, digest: str | None) -> ReferenceError:
    """The error for a reference naming a registry and no repository, with a hint."""
    suggestion = f"{host}/<repository>"
    if tag is not None:
        suggestion += f":{tag}"
    elif digest is None:
        suggestion += ":<tag>"
    if digest is not None:
        suggestion += f"@{digest}"
    return _invalid(text, f"names a registry but no repository: did you mean {_shown(suggestion)}?")


def _check_repository(text: str, repository: str) -> None:
    if not repository:
        raise _invalid(text, "repository name is empty")
    components = repository.split("/")
    if any(c != c.lower() for c in components):
        raise _invalid(text, "repository name must be lowercase")
    if any(not c for c in components):
        raise _invalid(text, "repository name has an empty path component")
    for c in components:
        if not PATH_COMPONENT_RE.fullmatch(c):
            raise _invalid(
                text,
                f"invalid repository path component {c!r}: use lowercase letters and "
                "digits, separated by '.', '_', '__' or '-'",
            )
    if len(repository) > MAX_REPOSITORY_LENGTH:
        raise _invalid(text, f"repository name is longer than {MAX_REPOSITORY_LENGTH} characters")


def _parse_ocidir(text: str) -> Reference:
    rest = text[len(OCIDIR_SCHEME) :]
    digest: str | None = None
    head, at, tail = rest.rpartition("@")
    if at and "/" not in tail and ":" in tail:
        _check_digest(text, tail)
        rest, digest = head, tail
    path, tag = _split_ocidir_tag(rest)
    if not path:
        raise _invalid(text, "the OCI layout path is empty")
    if "\x00" in path:
        raise _invalid(text, "the OCI layout path contains a NUL character")
    norm = posixpath.normpath(path)
    if norm.startswith("//"):
        norm = "/" + norm.lstrip("/")
    return Reference(
        scheme="ocidir",
        registry="",
        repository="",
        tag=tag,
        digest=digest,
        layout_path=norm,
    )


def parse_reference(text: str) -> Reference:
    """Parse a registry reference or an ``ocidir://`` reference.

    Raises :class:`~replicator.errors.ReferenceError` (and nothing else) when
    ``text`` is malformed.  The result is normalised: lower-case host, Docker Hub
    names completed, so ``str(parse_reference(str(r))) == str(r)``.
    """
    if not isinstance(text, str):
        raise ReferenceError(f"invalid reference {text!r}: not a string")
    if not text:
        raise ReferenceError("invalid reference: empty")
    if text.startswith(OCIDIR_SCHEME):
        return _parse_ocidir(text)
    if "://" in text:
        scheme = text.split("://", 1)[0]
        raise _invalid(
            text,
            f"unsupported scheme {scheme!r}: write host/repository[:tag] or ocidir://path[:tag]",
        )
    if any(ch.isspace() for ch in text):
        raise _invalid(text, "references contain no whitespace")
    name = text
    digest: str | None = None
    if "@" in name:
        name, _, digest = name.partition("@")
        if "@" in digest:
            raise _invalid(text, "more than one '@'")
        _check_digest(text, digest)
    bare = _bare_registry(name)
    if bare is not None:
        raise _registry_only(text, bare[0], bare[1], digest)
    name, tag = _split_tag_suffix(name)
    if tag is not None:
        _check_tag(text, tag)
    if not name:
        raise _invalid(text, "repository name is empty")
    first, slash, remainder = name.partition("/")
    if slash and _looks_like_host(first):
        registry = _normalise_host(text, first)
        repository = remainder
    else:
        registry = DOCKER_HUB_DISPLAY
        repository = name
    if registry in DOCKER_HUB_ALIASES:
        registry = DOCKER_HUB_REGISTRY
        if repository and "/" not in repository:
            repository = DOCKER_HUB_OFFICIAL_PREFIX + repository
    _check_repository(text, repository)
    return Reference(
        scheme="registry", registry=registry, repository=repository, tag=tag, digest=digest
    )


def parse_repository(text: str) -> Reference:
    """Parse a repository (``host/name`` or ``ocidir://path``) that names no tag or digest.

    Raises :class:`~replicator.errors.ReferenceError` when ``text`` is malformed
    or carries a tag or digest.
    """
    ref = parse_reference(text)
    if ref.digest is not None:
        raise _invalid(text, "expected a repository, without a digest")
    if ref.tag is not None:
        raise _invalid(text, "expected a repository, without a tag")
    return ref


def split_tags(text: str) -> tuple[Reference, tuple[str, ...]]:
    """Parse a destination that may name several tags: ``host/repo:t1,t2``.

    Returns the reference with the first tag and every tag in order (duplicates
    removed).  Without a tag the tuple is empty and the reference has no tag.
    """
    if not isinstance(text, str):
        raise ReferenceError(f"invalid reference {text!r}: not a string")
    base, digest_part = text, ""
    head, at, tail = text.rpartition("@")
    if at and "/" not in tail:
        base, digest_part = head, at + tail
    bare = _bare_registry(base)
    if bare is not None:
        raise _registry_only(text, bare[0], bare[1], digest_part[1:] or None)
    name, tags_text = _split_tag_suffix(base)
    if tags_text is None or "," not in tags_text:
        ref = parse_reference(text)
        return ref, ((ref.tag,) if ref.tag else ())
    tags: list[str] = []
    for tag in tags_text.split(","):
        _check_tag(text, tag)
        if tag not in tags:
            tags.append(tag)
    ref = parse_reference(f"{name}:{tags[0]}{digest_part}")
    return ref, tuple(tags)


def referrers_tag(digest: str) -> str:
    """The fallback referrers tag of ``digest``: ``<alg>-<hex>`` (alg ≤ 32, hex ≤ 64 chars).

    Characters not allowed in tags are replaced by ``-``, as the distribution
    spec prescribes.  Raises ReferenceError for something that is not a digest.
    """
    if not isinstance(digest, str) or not _GENERIC_DIGEST_RE.fullmatch(digest):
        raise ReferenceError(f"invalid digest {str(digest)[:_MAX_SHOWN]!r}")
    alg, _, encoded = digest.partition(":")
    tag = f"{alg[:32]}-{encoded[:64]}"
    return _NOT_TAG_CHARS.sub("-", tag)


def is_referrers_tag(tag: str) -> bool:
    """True for a tag of the referrers tag schema (``sha256-`` + 64 hex, or ``<alg>-`` + 64 hex).

    Ordinary tags such as ``release-1`` never match: 64 hex digits are required.
    """
    if not _REFERRERS_TAG_RE.fullmatch(tag):
        return False
    alg = tag[:-65]
    return len(alg) <= 32


def normalise_host(text: str) -> str:
    """Normalise a registry host given alone (``login``, ``repo ls``): lower case, Docker Hub.

    ``docker.io``, ``index.docker.io`` and ``registry-1.docker.io`` all give
    ``registry-1.docker.io``.  Raises ReferenceError for anything that is not
    ``host[:port]``.
    """
    if not isinstance(text, str) or not text:
        raise ReferenceError("invalid registry host: empty")
    host = text
    for prefix in ("https://", "http://"):
        if host.startswith(prefix):
            host = host[len(prefix) :]
    host = host.rstrip("/")
    if "/" in host or "@" in host:
        raise ReferenceError(f'invalid registry host "{_shown(text)}": expected host[:port]')
    m = _HOST_RE.fullmatch(host)
    if m is None:
        raise ReferenceError(f'invalid registry host "{_shown(text)}": expected host[:port]')
    port = m.group("port")
    if port is not None and not 0 < int(port) <= 65535:
        raise ReferenceError(f'invalid registry host "{_shown(text)}": invalid port')
    host = host.lower()
    return DOCKER_HUB_REGISTRY if host in DOCKER_HUB_ALIASES else host
