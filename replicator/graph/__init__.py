"""Artifact graphs: selection filters and breadth-first discovery over a Target."""

from replicator.graph.filters import GraphFilter
from replicator.graph.walk import GraphNode, GraphSnapshot, snapshot_graph, walk_graph

__all__ = ["GraphFilter", "GraphNode", "GraphSnapshot", "snapshot_graph", "walk_graph"]
