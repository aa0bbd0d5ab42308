"""replicator.sync."""
