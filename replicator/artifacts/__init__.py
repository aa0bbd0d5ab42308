"""Artifact operations over the Target protocol: push, attach, pull, discover, delete.

This layer sits between the CLI and the targets.  It builds artifact manifests
(ORAS conventions), packs and safely unpacks directories, walks referrer graphs
and deletes them deepest first.  It speaks to storage only through
:class:`replicator.targets.base.Target`, so everything works the same for a
registry and an OCI image layout; it never prints (progress goes to a callback).
"""

from __future__ import annotations
