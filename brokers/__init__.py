"""Broker adapters, one module per transport; found by URL scheme (``taskmesh.transport``)."""
