"""replicator: asynchronous, high-throughput replication of OCI artifact graphs."""

__version__ = "0.1.0"
