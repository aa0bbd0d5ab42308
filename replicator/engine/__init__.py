"""replicator.engine."""
