"""replicator.targets.registry."""
