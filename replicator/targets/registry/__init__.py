"""The registry target: OCI distribution over HTTP (aiohttp).

``RegistryTarget`` (in :mod:`.client`) implements the Target protocol for one
registry host; ``RequestStats`` counts what it sent.  They are imported lazily
so that importing :mod:`.options` stays cheap (no aiohttp).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from replicator.targets.base import RequestStats
    from replicator.targets.registry.client import RegistryTarget

__all__ = ["RegistryTarget", "RequestStats"]


def __getattr__(name: str) -> Any:
    if name == "RegistryTarget":
        from replicator.targets.registry.client import RegistryTarget

        return RegistryTarget
    if name == "RequestStats":
        from replicator.targets.base import RequestStats

        return RequestStats
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
