"""replicator.oci."""
