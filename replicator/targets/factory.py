"""Choose and open the storage backend a reference names.

Like regclient, the backend follows the reference's scheme: a plain
``host/repository`` is a registry, ``ocidir://path`` an OCI image layout on
disk.  Callers above ``targets/`` never import a backend directly.
"""

from __future__ import annotations

from collections.abc import Callable

from replicator.errors import ReferenceError
from replicator.oci.reference import Reference
from replicator.targets.base import Target
from replicator.targets.registry.options import RegistryOptions


def open_target(
    ref: Reference,
    *,
    options_for: Callable[[str], RegistryOptions],
    create: bool = False,
) -> Target:
    """A new :class:`Target` for the location ``ref`` names.

    ``options_for(host)`` supplies connection settings and credentials for a
    registry host; it is called only for registry references.  ``create``
    allows an OCI layout directory to be created when it does not exist yet
    (destinations); it has no meaning for registries.  The caller owns the
    target and must ``aclose()`` it.  Raises :class:`ReferenceError` for a
    reference no backend can serve.
    """
    if ref.scheme == "ocidir":
        if not ref.layout_path:
            raise ReferenceError(f"{ref}: an ocidir:// reference needs a directory path")
        from replicator.targets.ocilayout import OCILayoutTarget

        return OCILayoutTarget(ref.layout_path, create=create)
    if ref.scheme == "registry":
        if not ref.registry:
            raise ReferenceError(f"{ref}: no registry host in the reference")
        from replicator.targets.registry.client import RegistryTarget

        return RegistryTarget(ref.registry, options_for(ref.registry))
    raise ReferenceError(f"{ref}: unsupported reference scheme {ref.scheme!r}")
