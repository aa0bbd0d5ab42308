"""Is it already there?  Presence of manifests at destinations, at the least cost.

A manifest is taken as present at a destination, in this order of cost:

1. *implied*: a parent present there vouches for it (an index stored only
   with its children present), or the subject's referrers listing there names
   it (:meth:`Presence.listed_at`);
2. the ledger (journal) holds a confirmation of it;
3. *absent without asking*: the destination repository was just found new
   (:meth:`Presence.repository_new`, one request per repository and run), or
   the referrer's subject was just pushed by this run (``fresh``);
4. otherwise the store is asked (``manifest_exists``), and a yes is recorded in
   the ledger.

Failures to answer are the destination's errors for :meth:`Presence.present`;
:meth:`Presence.presence` (a batch used to decide whether a referrer must be
read at all) leaves a destination that cannot answer out instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import structlog

from replicator.engine.context import RunContext, run_all
from replicator.engine.jobs import Endpoint
from replicator.engine.ledger import Confirmation
from replicator.engine.state import DestRepo, cell, dest_node
from replicator.errors import ReplicatorError
from replicator.oci.descriptor import Descriptor

_log = structlog.get_logger("replicator.engine")


class Presence:
    """Answers "is this manifest at that destination?" (see the module doc)."""

    def __init__(self, ctx: RunContext) -> None:
        self._ctx = ctx
        self._state = ctx.state

    async def present(
        self,
        d: Endpoint,
        desc: Descriptor,
        implied: frozenset[DestRepo],
        fresh: frozenset[DestRepo],
        *,
        root: bool = False,
    ) -> bool:
        """Whether ``desc`` is at ``d`` (raises the store's error when it cannot tell).

        A job's ``root`` that only an inherited confirmation (an earlier attempt's
        journal) places there is checked with the store: one request per job on
        a resumed run, which finds a repository wiped since.  When it is gone, the
        ledger is distrusted for that repository for the rest of the run.
        """
        if d.key in implied:
            return True
        ledger = self._ctx.ledger
        hit = await ledger.lookup(d.location, d.repository, desc.digest)
        if hit is not None:
            if not root or not hit.inherited:
                return True
            if await self._exists(d, desc):
                return True
            ledger.distrust(d.key)
            await ledger.forget(d.location, d.repository, desc.digest)
            self._ctx.warn(
                f"{d} lost {desc.digest[:19]}, which the journal had recorded there: "
                "the journal's other records for it are not trusted in this run"
            )
            return False
        if d.key in fresh:
            return False
        if await self.repository_new(d):
            return False
        return await self._exists(d, desc)

    async def _exists(self, d: Endpoint, desc: Descriptor) -> bool:
        """Ask the store; a yes is recorded in the ledger."""
        exists = await self._ctx.limited(
            "meta", d.location, lambda: d.target.manifest_exists(d.repository, desc)
        )
        if exists:
            await self._ctx.ledger.record(
                Confirmation(
                    "manifest",
                    "exists",
                    d.location,
                    d.repository,
                    desc.digest,
                    desc.size,
                    media_type=desc.media_type,
                )
            )
        return exists

    async def presence(
        self,
        desc: Descriptor,
        dests: Sequence[Endpoint],
        implied: frozenset[DestRepo],
        fresh: frozenset[DestRepo],
    ) -> dict[DestRepo, bool]:
        """Presence of ``desc`` at each destination that could be asked (errors: left out).

        A destination where another visit is deciding this node already is
        left out as well (unknown here), unless that visit succeeded.
        """
        known: dict[DestRepo, bool] = {}

        async def ask(d: Endpoint) -> None:
            decided = self._state.committed.get(dest_node(d.key, desc.digest))
            if decided is not None and decided.claimed:
                if decided.ok:
                    known[d.key] = True
                return
            try:
                known[d.key] = await self.present(d, desc, implied, fresh)
            except ReplicatorError as exc:
                _log.debug("engine.presence_check_failed", destination=str(d), error=str(exc))

        await run_all([partial(ask, d) for d in dests])
        return known

    async def repository_new(self, d: Endpoint) -> bool:
        """Whether the store said ``d``'s repository did not exist (asked once per run).

        In a repository the store does not know (no tag listed: ``404
        NAME_UNKNOWN``), no manifest is asked about before it is pushed: that
        saves a ``HEAD`` per manifest and per tag in a cold copy.  The answer is
        taken when the run first needs it; what this run pushes there since is
        in the ledger, which is asked first.  Only untagged manifests an earlier
        run left there without recording them (a ``--no-journal`` run that
        failed before its tags) are pushed again — the same bytes, so the
        result is the same.  Stores without the :class:`RepositoryProbe`
        ability (OCI layouts, where a lookup costs no request) and any failure
        to answer mean "not new".
        """
        probe = self._ctx.abilities(d.target).repository_probe
        if probe is None:
            return False
        found = self._state.new_repos.get(d.key)
        if found is not None:
            await found.wait()
            return bool(found.value)
        once = cell(self._state.new_repos, d.key)
        new = False
        try:
            new = bool(
                await self._ctx.limited(
                    "meta", d.location, partial(probe.repository_is_new, d.repository)
                )
            )
        except ReplicatorError as exc:
            _log.debug("engine.repository_probe_failed", destination=str(d), error=str(exc))
        finally:
            once.set(new)
        return new

    def repository_asked(self, d: Endpoint) -> bool:
        """True when :meth:`repository_new` was asked for ``d`` already."""
        return d.key in self._state.new_repos

    async def listed_at(
        self, dests: Sequence[Endpoint], subject: Descriptor, fresh: frozenset[DestRepo]
    ) -> dict[DestRepo, frozenset[str]]:
        """The referrers each destination already lists for ``subject`` (where it can tell).

        A referrer listed there is taken as present, as an index's children
        are once the index is: the registry stored that index (or answered
        the referrers API) only with every manifest it names present.  One
        read per subject replaces one presence request per referrer — on a
        re-run, nearly half of a ``-r`` run's destination requests.  Not asked
        where ``subject`` was just pushed (nothing can be listed yet), nor of
        stores without the :class:`ReferrersListing` ability (OCI layouts: their
        lookups cost no request); a failed read only means asking referrer by
        referrer.
        """
        out: dict[DestRepo, frozenset[str]] = {}

        async def read(d: Endpoint) -> None:
            lister = self._ctx.abilities(d.target).referrers_listing
            if lister is None or d.key in fresh:
                return
            try:
                out[d.key] = await self._ctx.limited(
                    "meta", d.location, partial(lister.listed_referrers, d.repository, subject)
                )
            except ReplicatorError as exc:
                _log.debug("engine.referrers_listing_failed", destination=str(d), error=str(exc))

        await run_all([partial(read, d) for d in dests])
        return out
