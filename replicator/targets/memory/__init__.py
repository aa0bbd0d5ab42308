"""A registry in memory that speaks the Target protocol: where engine policies are unit-tested.

:class:`MemoryTarget` keeps, per repository, blobs and manifests as exact bytes,
and tags, as a distribution registry does, and counts every call as the requests
a registry client would have sent, under the registry target's kinds
(:class:`~replicator.targets.base.RequestStats`).  A complete implementation, not
a mock of HTTP: the copy engine is tested on it in milliseconds, as oras-go tests
its graph copy on ``content/memory``; real registries prove the integration.

Guarantees:

* Every byte is checked against its digest.  ``fetch_blob`` read from 0 raises
  :class:`~replicator.errors.IntegrityError` instead of yielding its last chunk
  when the stored bytes do not match; ``fetch_manifest`` verifies; ``push_blob``
  stores nothing whose digest or size does not match, whatever ``verify`` says
  (the closing ``PUT`` checks, as a registry does).
* Distribution's rules: a manifest naming a blob or index child the repository
  lacks is refused with ``RegistryError`` code ``MANIFEST_BLOB_UNKNOWN``
  (``subject`` is the exception); tags match the tag grammar; a repository is
  unknown (``NAME_UNKNOWN``) until its first tag; a deleted manifest loses its tags.
* Without the referrers API each subject's fallback index is kept under the tag
  ``sha256-<hex>``: updated on push unless ``defer_referrers``, one
  read-modify-write at a time per subject, the replaced index deleted.  Reading
  one costs what it costs the registry target: a listing reads only fallback
  tags that exist (the repository's tags listed once), and nothing is read back
  in a repository ``repository_is_new`` found new.
* Every request passes a checkpoint, so concurrent callers interleave as over a
  network.  ``requests`` logs each request and ``writes`` each committed change
  in order: tests read the order of confirmed writes there.
* Optional abilities are chosen per instance: ``MemoryTarget(...)`` returns an
  instance of a subclass with exactly the abilities asked for, so ``isinstance``
  (:func:`~replicator.targets.base.abilities_of`) sees the configuration.

Faults belong to the store: :meth:`MemoryTarget.fail` makes requests of a kind
(naming one digest or tag, in one repository, when given) fail with a chosen
error; :meth:`MemoryTarget.corrupt` damages stored bytes.

The store, its request log and its blob uploads are in :mod:`.store`;
manifests, referrers and the optional abilities in :mod:`.target`.
"""

from replicator.targets.memory.store import Fault, Request, StoreView, Write
from replicator.targets.memory.target import MemoryTarget

__all__ = ["Fault", "MemoryTarget", "Request", "StoreView", "Write"]
