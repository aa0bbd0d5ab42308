"""A :class:`~replicator.sync.TargetPool` that also serves a bundle at its location key.

The run layer opens every endpoint through a pool.  A create's writer and an
import's reader are not opened from a reference's scheme: this pool hands out
the given target for its location and opens every other location as usual.
The bundle target stays the caller's to close.
"""

from __future__ import annotations

from replicator.oci.reference import Reference
from replicator.sync.targets import OptionsFor, TargetPool
from replicator.targets.base import Target


class BundlePool(TargetPool):
    """A target pool with one extra, caller-owned target at ``location``.

    ``LOCATION/REPOSITORY`` is served by it too: a bundle read as a source is
    named per repository (``ocidir://DIR#ID/team/api:v1``), so that two
    repositories' tags of the same name are two sources to the run layer.
    """

    def __init__(self, options_for: OptionsFor | None, location: str, target: Target) -> None:
        super().__init__(options_for)
        self._location = location
        self._bundle = target

    def _serves(self, location: str) -> bool:
        return location == self._location or location.startswith(self._location + "/")

    def open(self, ref: Reference, *, create: bool = False) -> Target:
        """The bundle for its location (and ``LOCATION/REPOSITORY``); others opened by the pool."""
        if self._serves(ref.location):
            return self._bundle
        return super().open(ref, create=create)

    def opened(self, location: str) -> Target | None:
        """The bundle for its location; otherwise what the pool opened."""
        if self._serves(location):
            return self._bundle
        return super().opened(location)


def bundle_reference(
    location_path: str, repository: str, tag: str | None, digest: str | None
) -> Reference:
    """A reference to ``repository`` (at ``tag`` or ``digest``) inside a bundle's location.

    ``location_path`` is what follows ``ocidir://`` in the bundle's location key.
    """
    return Reference(
        scheme="ocidir",
        registry="",
        repository=repository,
        tag=tag,
        digest=digest,
        layout_path=location_path,
    )
