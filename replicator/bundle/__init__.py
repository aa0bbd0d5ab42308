"""replicator.bundle: air-gap bundles — sealed, split, incremental, verified before import.

A bundle is a directory that travels on removable media: ``bundle.json`` (what
is inside and where each byte lies), an optional detached signature
``bundle.json.sig``, and ``part-000.tar``, ``part-001.tar``, ... — consecutive
slices of one tar stream that, concatenated, is an OCI image layout holding
every repository of the bundle with one blob store (docs/BUNDLES.md).

The modules, from the bottom up:

* :mod:`.model` — the documents (``bundle.json``, receipts) and the content
  list they share, parsed strictly (they are untrusted input on the far side);
* :mod:`.tarformat` — tar headers and the part stream (members placed across
  parts of bounded size, a blob larger than a part split over several);
* :mod:`.spans` — reading bytes back from the parts by offset;
* :mod:`.signing` — detached Ed25519 / ECDSA P-256 signatures;
* :mod:`.state` — the durable log of a create in progress (resume);
* :mod:`.writer` — :class:`~.writer.BundleWriter`, the Target a create's
  engine run writes into; :mod:`.layout` — what it adds at the end
  (``index.json``, referrers fallback indexes);
* :mod:`.reader` — :class:`~.reader.BundleSource`, a read-only Target over the
  parts that an import's engine run reads from;
* :mod:`.verify` — every check, streaming, nothing written;
* :mod:`.base` — bases of incremental bundles, receipts;
* :mod:`.create`, :mod:`.importing` — the two runs, through
  :func:`replicator.sync.run_copy`.
"""

from replicator.bundle.create import CreateOutcome, CreateRequest, create_bundle
from replicator.bundle.documents import load_bundle_document
from replicator.bundle.importing import ImportOutcome, ImportRequest, import_bundle
from replicator.bundle.model import BundleDocument, Content
from replicator.bundle.verify import Problem, VerifyResult, verify_bundle

__all__ = [
    "BundleDocument",
    "Content",
    "CreateOutcome",
    "CreateRequest",
    "ImportOutcome",
    "ImportRequest",
    "Problem",
    "VerifyResult",
    "create_bundle",
    "import_bundle",
    "load_bundle_document",
    "verify_bundle",
]
