"""replicator.cli."""
