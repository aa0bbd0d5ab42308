"""``bundle create``: copy the selected graphs into a new bundle, resumably.

:func:`create_bundle` opens (or resumes) the output directory's writer
(:class:`~.writer.BundleWriter`), selects the roots (:mod:`.selection`: a sync
config's expansion, or references), runs them through
:func:`replicator.sync.run_copy` into the writer — the engine's whole graphs,
verified bytes, journal and graceful stop — and, when the run succeeded,
finalizes the bundle (:mod:`.finalize`).

A killed or stopped create is resumed by the same command: the journal run
(keyed by what is bundled, not by the tags it expanded to) and the writer's
own log (:mod:`.state`) continue where they stopped; the parts are never
written twice.  An output directory holding a finished bundle, files of its
own, or an unfinished bundle of another create is refused (``--fresh``
discards the latter).
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import structlog

from replicator import __version__
from replicator.bundle.appender import Pending, remove_parts
from replicator.bundle.base import load_base
from replicator.bundle.finalize import Finish, finalize
from replicator.bundle.model import (
    DOCUMENT_NAME,
    SIGNATURE_NAME,
    BaseRecord,
    BundleDocument,
    part_name,
)
from replicator.bundle.pool import BundlePool, bundle_reference
from replicator.bundle.selection import (
    BundleItem,
    check_repositories,
    items_from_expansion,
    items_from_references,
)
from replicator.bundle.signing import SigningKey, VerifyKey
from replicator.bundle.state import (
    STATE_NAME,
    CreateState,
    Identity,
    Partial,
    StateLog,
    identity_of,
    replay,
)
from replicator.bundle.tarformat import (
    BLOCK,
    MIN_PART_SIZE,
    Mark,
    PartStream,
    RecordedHash,
    hash_prefix,
    round_part_size,
)
from replicator.bundle.writer import BundleWriter
from replicator.engine import CopyOptions, LimitSettings
from replicator.engine.events import CopyObserver
from replicator.errors import EXIT_OK, EXIT_REFUSED, LayoutError, UsageError
from replicator.sync import (
    DestinationSpec,
    JournalChoice,
    ReferenceJob,
    RunOutcome,
    RunRequest,
    StopRequest,
    run_copy,
)
from replicator.sync.config import SyncConfig, canonical_job, content_digest
from replicator.sync.expand import expand
from replicator.sync.runner import MessageSink
from replicator.sync.targets import OptionsFor

log = structlog.get_logger(__name__)

GiB = 1024**3
DEFAULT_PART_SIZE = 4 * GiB


@dataclass(frozen=True, slots=True)
class CreateRequest:
    """One ``bundle create``: what to bundle (a config's jobs, or references) and how."""

    output: Path
    config: SyncConfig | None = None
    job_names: tuple[str, ...] = ()
    references: tuple[str, ...] = ()
    max_part_size: int = DEFAULT_PART_SIZE
    base: Path | None = None
    base_key: Path | None = None
    sign_key: Path | None = None
    journal: JournalChoice = field(default_factory=JournalChoice)
    limits: LimitSettings = field(default_factory=LimitSettings)
    fresh: bool = False
    command: tuple[str, ...] = ()


@dataclass(slots=True)
class CreateOutcome:
    """How a create ended: the run, the bundle (None unless finished), the exit code."""

    directory: Path
    run: RunOutcome | None
    document: BundleDocument | None
    items: list[BundleItem]
    exit_code: int
    resumed: bool = False

    @property
    def ok(self) -> bool:
        """True when the bundle is complete."""
        return self.document is not None

    @property
    def refused(self) -> list[str]:
        """Roots a promotion gate refused: left out of a complete bundle (exit 10)."""
        return [] if self.run is None else _refused(self.run)


def _definition(request: CreateRequest, base: BaseRecord | None) -> tuple[str, list[Any]]:
    """The create's key (what is bundled) and the jobs ``bundle.json`` records."""
    if request.config is not None:
        config = request.config
        names = request.job_names or tuple(j.name for j in config.jobs)
        chosen = [config.job(n) for n in dict.fromkeys(names)]
        jobs: list[Any] = [
            {"name": j.name, "digest": config.job_digests[j.name], "definition": canonical_job(j)}
            for j in chosen
        ]
        what: Any = {"config": {j.name: config.job_digests[j.name] for j in chosen}}
    else:
        jobs = [{"references": list(request.references)}]
        what = {"references": list(request.references)}
    key = content_digest(
        {
            "bundle": what,
            "maxPartSize": round_part_size(request.max_part_size),
            "base": None if base is None else base.content_digest,
        }
    )
    return key, jobs


async def create_bundle(
    request: CreateRequest,
    *,
    options_for: OptionsFor | None = None,
    observer: CopyObserver | None = None,
    stop: StopRequest | None = None,
    on_message: MessageSink | None = None,
) -> CreateOutcome:
    """Create (or resume) the bundle ``request`` describes (see the module doc).

    Raises a :class:`~replicator.errors.ReplicatorError` for what stops it
    before the copy (a bad key, base, output directory, selection); the copy's
    own failures are in the outcome (the state is kept for a rerun).
    """
    if request.config is None and not request.references:
        raise UsageError("bundle create needs a config file or at least one reference")
    if round_part_size(request.max_part_size) < MIN_PART_SIZE:
        raise UsageError(f"--max-part-size must be at least {MIN_PART_SIZE // 1024}KiB")
    sign_key = SigningKey.load(request.sign_key) if request.sign_key else None
    base_key = VerifyKey.load(request.base_key) if request.base_key else None
    base = load_base(request.base, base_key) if request.base else None
    key, jobs_json = _definition(request, base)
    output = request.output.expanduser().resolve()
    writer = await open_writer(output, key, request.max_part_size, base, fresh=request.fresh)
    resumed = writer.state.end != (0, 0)
    try:
        await writer.appender.start()
        pool = BundlePool(options_for, writer.location, writer)
        async with pool:
            items = await _select(request, pool)
            run = await run_copy(
                _run_request(request, items, writer, key),
                targets=pool,
                observer=observer,
                stop=stop,
                on_message=on_message,
            )
            document = None
            if _complete(run):
                finish = Finish(
                    jobs_json, f"replicator {__version__}", _roots(items, run), base, sign_key
                )
                document = await finalize(writer, finish)
    finally:
        await writer.aclose()
    code = run.exit_code
    if document is not None:
        code = EXIT_REFUSED if _refused(run) else EXIT_OK
    return CreateOutcome(output, run, document, items, code, resumed=resumed)


def _refused(run: RunOutcome) -> list[str]:
    """The roots a promotion gate refused (left out of the bundle)."""
    return [j.source for i, j in enumerate(run.report.jobs) if run.job_state(i) == "refused"]


def _complete(run: RunOutcome) -> bool:
    """True when every root is in the writer, or was refused by its promotion gate."""
    if run.ok:
        return True
    if run.status == "interrupted" or not run.report.jobs:
        return False
    return all(
        run.job_state(i) in ("copied", "up-to-date", "refused") for i in range(len(run.report.jobs))
    )


async def _select(request: CreateRequest, pool: BundlePool) -> list[BundleItem]:
    if request.config is not None:
        expansion = await expand(request.config, request.job_names, pool, honour_immutable=False)
        errors = expansion.errors
        if errors:
            first = errors[0]
            if len(errors) > 1:
                first.details = tuple(str(e) for e in errors)
            raise first
        items = items_from_expansion(expansion)
    else:
        items = await items_from_references(request.references, pool)
    if not items:
        raise UsageError("nothing to bundle: the selection holds no tag")
    check_repositories(items)
    return items


def _run_request(
    request: CreateRequest, items: list[BundleItem], writer: BundleWriter, key: str
) -> RunRequest:
    location_path = writer.location.removeprefix("ocidir://")
    jobs = []
    for item in items:
        dest = bundle_reference(
            location_path,
            item.repository,
            item.tag,
            item.source.digest if item.tag is None else None,
        )
        jobs.append(
            ReferenceJob(
                source=item.source,
                destinations=(DestinationSpec(dest, (item.tag,) if item.tag else ()),),
                origin=item.name and f"job {item.name}",
                name=item.name,
                require=item.require,
                filter=item.filter,
            )
        )
    return RunRequest(
        jobs=tuple(jobs),
        options=CopyOptions(keep_going=True),
        limits=request.limits,
        journal=request.journal,
        command=request.command,
        definition={"bundle-create": key, "output": str(writer.directory)},
    )


def _roots(items: list[BundleItem], run: RunOutcome) -> dict[str, set[str]]:
    """Roots named by digest only, per bundle repository (the digest the run copied)."""
    roots: dict[str, set[str]] = {}
    for item, result in zip(items, run.report.jobs, strict=False):
        if item.tag is None and result.digest:
            roots.setdefault(item.repository, set()).add(result.digest)
    return roots


# ------------------------------------------------------------------ output directory


async def open_writer(
    directory: Path, key: str, max_part_size: int, base: BaseRecord | None, *, fresh: bool
) -> BundleWriter:
    """The writer of ``directory``: a resumed create of the same key, or a new one."""
    identity = Identity(
        id=secrets.token_hex(8),
        created=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        mtime=int(time.time()),
        key=key,
        max_part_size=round_part_size(max_part_size),
        base=None if base is None else base.content_digest,
    )
    return await anyio.to_thread.run_sync(_open_output, directory, identity, base, fresh)


def _open_output(
    directory: Path, identity: Identity, base: BaseRecord | None, fresh: bool
) -> BundleWriter:
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(
            f"cannot create the output directory {directory} ({exc.strerror})"
        ) from None
    if (directory / DOCUMENT_NAME).exists():
        raise UsageError(f"{directory} already holds a bundle: give a new or empty directory")
    state_path = directory / STATE_NAME
    if not state_path.exists() and any(directory.iterdir()):
        raise UsageError(f"{directory} is not empty: give a new or empty directory")
    log_file = StateLog.open(state_path)
    try:
        state, stream, pending = _resume_or_start(directory, identity, log_file, fresh)
    except BaseException:
        log_file.close()
        raise
    content = None if base is None else base.content
    return BundleWriter(directory, state, stream, log_file, content, pending)


def _resume_or_start(
    directory: Path, identity: Identity, log_file: StateLog, fresh: bool
) -> tuple[CreateState, PartStream, Pending | None]:
    records = log_file.read()
    found = identity_of(records[0]) if records else None
    if records and not fresh:
        if found is None:
            raise LayoutError(
                f"{directory}: the log of an unfinished create is damaged: rerun with --fresh"
            )
        if not found.same_create(identity):
            raise UsageError(
                f"{directory} holds an unfinished bundle of another create (other jobs, part "
                "size or base): rerun that create, or give --fresh to discard it"
            )
        state = replay(found, records[1:])
        log.info("bundle.create_resumed", bundle=str(directory), id=found.id, end=list(state.end))
        return _resumed_stream(directory, state)
    log_file.reset()
    remove_parts(directory)
    (directory / SIGNATURE_NAME).unlink(missing_ok=True)
    log_file.append([{"identity": identity.to_json()}])
    return CreateState(identity), PartStream(directory, identity.max_part_size), None


def _resumed_stream(
    directory: Path, state: CreateState
) -> tuple[CreateState, PartStream, Pending | None]:
    """The part stream cut back to what the log records (and a half-written blob it keeps)."""
    partial = state.partial
    if partial is not None and not _partial_on_disk(directory, partial, state):
        partial = state.partial = None
    upto = state.end
    if partial is not None:
        last = partial.spans[-1] if partial.spans else None
        upto = (
            (last.part, last.offset + last.length)
            if last is not None
            else (partial.header[0], partial.header[1] + BLOCK)
        )
    stream = PartStream(
        directory, state.identity.max_part_size, *_parts_upto(directory, state, upto)
    )
    pending = None
    if partial is not None:
        part, offset = partial.header
        mark = Mark(part + 1, offset, hash_prefix(stream.path(part), offset))
        pending = Pending(partial, mark)
    return state, stream, pending


def _partial_on_disk(directory: Path, partial: Partial, state: CreateState) -> bool:
    """True when the parts still hold a half-written blob's bytes after the log's end."""
    if partial.header < state.end:
        return False
    for span in partial.spans:
        path = directory / part_name(span.part)
        if not path.exists() or path.stat().st_size < span.offset + span.length:
            return False
    return True


def _parts_upto(
    directory: Path, state: CreateState, upto: tuple[int, int]
) -> tuple[list[int], list[Any]]:
    """Sizes and hash states of the parts up to ``upto``; later part files removed."""
    last, end = upto
    sizes, hashers = [], []
    max_size = state.identity.max_part_size
    for index in range(last + 1):
        path = directory / part_name(index)
        done = state.parts_done.get(index)
        want = end if index == last else (done[0] if done is not None else max_size)
        size = path.stat().st_size if path.exists() else -1
        if size < want:
            raise LayoutError(
                f"{directory}: {path.name} is shorter than the create's log says: rerun with --fresh"
            )
        sizes.append(want)
        if done is not None and index < last:
            hashers.append(RecordedHash(done[1]))
        else:
            hashers.append(hash_prefix(path, want))
    for path in directory.glob("part-*.tar"):
        if int(path.stem.split("-")[1]) > last:
            path.unlink()
    return sizes, hashers
