"""replicator.targets."""
