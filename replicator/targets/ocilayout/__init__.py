"""The OCI image layout target (``ocidir://PATH``), one module per responsibility.

* ``target.py`` — :class:`OCILayoutTarget`: the Target protocol, manifests,
  tags, referrers, delete;
* ``files.py`` — the layout's paths, opening and checking it, atomic writes;
* ``index_store.py`` — ``index.json``: batched atomic updates under a
  cross-process lock;
* ``entries.py`` — what an ``index.json`` entry says (tag names,
  ``artifactType``) and the listing rules;
* ``blobs.py`` and ``tempfiles.py`` — verified reads, resumable verified
  writes, abandoned temporary files;
* ``manifests.py`` — verified manifest reads and the parsed-facts cache.
"""

from replicator.targets.ocilayout.blobs import READ_CHUNK
from replicator.targets.ocilayout.entries import REF_NAME, ref_name_for, tag_of_ref_name
from replicator.targets.ocilayout.files import LAYOUT_VERSION
from replicator.targets.ocilayout.target import OCILayoutTarget
from replicator.targets.ocilayout.tempfiles import STALE_AFTER

__all__ = [
    "LAYOUT_VERSION",
    "READ_CHUNK",
    "REF_NAME",
    "STALE_AFTER",
    "OCILayoutTarget",
    "ref_name_for",
    "tag_of_ref_name",
]
