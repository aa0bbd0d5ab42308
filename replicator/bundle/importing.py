"""``bundle import``: verify, check the base at the destination, copy every graph, write a receipt.

:func:`import_bundle`:

1. verifies the whole bundle (:func:`~replicator.bundle.verify.verify_bundle`)
   and refuses on any problem — before the destination is even opened, so
   nothing is written there;
2. for an incremental bundle, asks the destination (``HEAD``, read only)
   about everything the bundle relies on its base for, and stops with the list
   of what is missing;
3. copies every tag's graph (and every root named by digest) from the bundle
   (:class:`~replicator.bundle.reader.BundleSource`) to the destination through
   :func:`replicator.sync.run_copy`: blobs and children first, referrers after
   their subject, **tags last**, each byte verified; journalled, so a killed
   import resumes;
4. writes the receipt: what the destination now holds (the bundle's content on
   top of its base's), signed when a key is given.

The destination is a registry host with an optional repository prefix
(``registry.local/mirror`` puts ``team/api`` at ``registry.local/mirror/team/api``)
or an ``ocidir://PATH`` layout (one shared layout, tags as ``team/api:v1``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

import anyio
import structlog

from replicator import __version__
from replicator.bundle.base import Receipt, write_receipt
from replicator.bundle.model import BundleDocument
from replicator.bundle.pool import BundlePool, bundle_reference
from replicator.bundle.reader import BaseAtDestination, BundleSource
from replicator.bundle.signing import SigningKey, VerifyKey
from replicator.bundle.verify import BaseNeed, VerifyResult, verify_bundle
from replicator.engine import CopyOptions, LimitSettings
from replicator.engine.events import CopyObserver
from replicator.errors import (
    EXIT_OK,
    IncompleteCopyError,
    LayoutError,
    NotFoundError,
    ReplicatorError,
    UsageError,
)
from replicator.oci.descriptor import Descriptor
from replicator.oci.reference import OCIDIR_SCHEME, Reference, parse_reference, parse_repository
from replicator.sync import (
    DestinationSpec,
    JournalChoice,
    ReferenceJob,
    RunOutcome,
    RunRequest,
    StopRequest,
    run_copy,
)
from replicator.sync.runner import MessageSink
from replicator.sync.targets import OptionsFor
from replicator.targets.base import Target

log = structlog.get_logger(__name__)

#: Environment variable naming the public key bundles must be signed with.
KEY_ENV = "REPLICATOR_BUNDLE_KEY"
#: Presence questions in flight at once while the base is checked.
BASE_CHECKS = 16


class BaseMissingError(IncompleteCopyError):
    """The destination lacks something an incremental bundle's base promised."""


@dataclass(frozen=True, slots=True)
class ImportDestination:
    """Where an import writes: a registry host and prefix, or an OCI layout."""

    text: str
    host: str | None = None
    prefix: str = ""
    layout: Path | None = None

    @classmethod
    def parse(cls, text: str) -> ImportDestination:
        """``HOST[/PREFIX]`` or ``ocidir://PATH``; :class:`UsageError` otherwise."""
        if text.startswith(OCIDIR_SCHEME):
            ref = parse_reference(text)
            if ref.tag or ref.digest or not ref.layout_path:
                raise UsageError(f"{text}: an import destination names a layout, no tag or digest")
            path = Path(ref.layout_path).expanduser().resolve()
            return cls(f"{OCIDIR_SCHEME}{path}", layout=path)
        host, _, prefix = text.strip("/").partition("/")
        probe = parse_repository(f"{host}/{prefix + '/' if prefix else ''}x")
        if probe.scheme != "registry" or not host:
            raise UsageError(f"{text}: expected HOST[/PREFIX] or ocidir://PATH")
        return cls(text.strip("/"), host=host, prefix=prefix)

    def repository(self, name: str) -> str:
        """The destination repository of bundle repository ``name``."""
        return self.reference(name, None, None).repository

    def reference(self, name: str, tag: str | None, digest: str | None) -> Reference:
        """The destination reference of ``name`` at ``tag`` or ``digest``."""
        if self.layout is not None:
            base = parse_reference(f"{OCIDIR_SCHEME}{self.layout}")
            return replace(base, repository=name, tag=tag, digest=digest)
        path = f"{self.prefix}/{name}" if self.prefix else name
        ref = parse_repository(f"{self.host}/{path}")
        if tag is not None:
            ref = ref.with_tag(tag)
        return ref.with_digest(digest) if digest is not None else ref


@dataclass(frozen=True, slots=True)
class ImportRequest:
    """One ``bundle import``."""

    bundle: Path
    destination: str
    key: Path | None = None
    receipt: Path | None = None
    sign_key: Path | None = None
    journal: JournalChoice = field(default_factory=JournalChoice)
    limits: LimitSettings = field(default_factory=LimitSettings)
    command: tuple[str, ...] = ()


@dataclass(slots=True)
class ImportOutcome:
    """How an import ended: the verification, the run, the receipt written, the exit code."""

    verified: VerifyResult
    run: RunOutcome | None
    receipt: Receipt | None
    receipt_path: Path | None
    exit_code: int


def default_receipt_path(bundle: Path) -> Path:
    """``DIR.receipt.json`` next to the bundle directory (carried back with it)."""
    return bundle.with_name(bundle.name + ".receipt.json")


def configured_key(given: Path | None) -> Path | None:
    """The public key to check signatures with: ``--key``, else :data:`KEY_ENV`."""
    if given is not None:
        return given
    env = os.environ.get(KEY_ENV)
    return Path(env) if env else None


async def import_bundle(
    request: ImportRequest,
    *,
    options_for: OptionsFor | None = None,
    observer: CopyObserver | None = None,
    stop: StopRequest | None = None,
    on_message: MessageSink | None = None,
) -> ImportOutcome:
    """Import the bundle ``request`` names (see the module doc).

    Raises :class:`~replicator.errors.IntegrityError` (exit 6) listing every
    problem of a bundle that does not verify, :class:`BaseMissingError` (exit
    9) listing what the destination lacks of the base; the copy's own failures
    are in the outcome.
    """
    key_path = configured_key(request.key)
    key = VerifyKey.load(key_path) if key_path else None
    sign_key = SigningKey.load(request.sign_key) if request.sign_key else None
    dest = ImportDestination.parse(request.destination)
    directory = request.bundle.expanduser().resolve()
    if dest.layout is not None and (dest.layout == directory or directory in dest.layout.parents):
        raise UsageError(f"{dest.text}: the destination cannot be inside the bundle")
    verified = await verify_bundle(directory, key)
    if not verified.ok:
        raise verified.error()
    document = verified.document
    assert document is not None
    source = BundleSource(directory, document)
    pool = BundlePool(options_for, source.location, source)
    async with pool:
        target = _open_destination(pool, dest, document, bool(verified.base_needs))
        if document.base is not None:
            source.base = BaseAtDestination(target, document.base.content, dest.repository)
            await check_base(target, dest, document, verified.base_needs)
        run = await run_copy(
            _run_request(request, document, source, dest),
            targets=pool,
            observer=observer,
            stop=stop,
            on_message=on_message,
        )
    receipt = receipt_path = None
    if run.ok:
        receipt_path = (request.receipt or default_receipt_path(directory)).expanduser()
        receipt = await _write_receipt(receipt_path, document, dest, sign_key)
    code = EXIT_OK if run.ok else run.exit_code
    return ImportOutcome(verified, run, receipt, receipt_path, code)


async def _write_receipt(
    path: Path, document: BundleDocument, dest: ImportDestination, key: SigningKey | None
) -> Receipt:
    """The receipt of a complete import: the bundle's content on top of its base's."""
    receipt = Receipt(
        tool=f"replicator {__version__}",
        imported=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        destination=dest.text,
        bundle_id=document.id,
        bundle_digest=document.content_digest,
        content=document.promised(),
    )
    await anyio.to_thread.run_sync(write_receipt, path, receipt, key)
    log.info("bundle.imported", bundle_id=document.id, destination=dest.text, receipt=str(path))
    return receipt


def _open_destination(
    pool: BundlePool, dest: ImportDestination, document: BundleDocument, incremental: bool
) -> Target:
    """The destination's target; a layout is created only for a bundle that needs no base."""
    names = sorted(document.content.repositories) or [""]
    ref = dest.reference(names[0], None, None)
    try:
        return pool.open(ref, create=not incremental)
    except LayoutError as exc:
        raise BaseMissingError(
            f"{dest.text} is not a layout holding this bundle's base ({exc.message}): import "
            "the bundle its base came from first, or build a complete bundle"
        ) from None


async def check_base(
    target: Target, dest: ImportDestination, document: BundleDocument, needs: list[BaseNeed]
) -> None:
    """Ask ``target`` about each thing the bundle relies on its base for; raise listing the missing."""
    assert document.base is not None
    base = document.base.content
    missing: list[str] = []
    limiter = anyio.CapacityLimiter(BASE_CHECKS)

    async def ask(need: BaseNeed) -> None:
        if need.kind == "manifest":
            rec = base.manifests[need.digest]
            repo = need.repository
            desc = Descriptor(rec.media_type, need.digest, rec.size)
            probe = partial(target.manifest_exists, dest.repository(repo), desc)
        else:
            blob = base.blobs[need.digest]
            repo = base.blob_home(need.digest, need.repository) or need.repository
            desc = Descriptor(blob.media_type, need.digest, blob.size)
            probe = partial(target.blob_exists, dest.repository(repo), desc)
        async with limiter:
            try:
                present = await probe()
            except NotFoundError:
                present = False
        if not present:
            missing.append(f"{dest.repository(repo)}: {need.kind} {need.digest}")

    async with anyio.create_task_group() as tg:
        for need in needs:
            tg.start_soon(ask, need)
    if missing:
        missing.sort()
        error: ReplicatorError = BaseMissingError(
            f"{dest.text} lacks {len(missing)} thing(s) the bundle's base ({document.base.kind} "
            f"{document.base.content_digest[:19]}) promised, first {missing[0]}: import the "
            "bundles before this one, or build a new bundle against the last receipt of "
            f"{dest.text}; nothing was written"
        )
        error.details = tuple(missing)
        raise error
    log.info("bundle.base_checked", destination=dest.text, checked=len(needs))


def _run_request(
    request: ImportRequest, document: BundleDocument, source: BundleSource, dest: ImportDestination
) -> RunRequest:
    location = source.location.removeprefix(OCIDIR_SCHEME)
    jobs = []
    for name, repo in sorted(document.content.repositories.items()):
        for tag, _digest in sorted(repo.tags.items()):
            jobs.append(
                ReferenceJob(
                    source=bundle_reference(f"{location}/{name}", name, tag, None),
                    destinations=(DestinationSpec(dest.reference(name, tag, None), (tag,)),),
                )
            )
        for digest in sorted(repo.roots):
            jobs.append(
                ReferenceJob(
                    source=bundle_reference(f"{location}/{name}", name, None, digest),
                    destinations=(DestinationSpec(dest.reference(name, None, digest), ()),),
                )
            )
    return RunRequest(
        jobs=tuple(jobs),
        options=CopyOptions(keep_going=True),
        limits=request.limits,
        journal=request.journal,
        command=request.command,
        definition={"bundle-import": {"bundle": document.content_digest, "destination": dest.text}},
    )
