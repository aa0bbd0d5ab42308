"""replicator.observe."""
