"""replicator.graph."""
