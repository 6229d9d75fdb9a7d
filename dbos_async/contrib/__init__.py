"""Integrations behind extras (``otel``, ``prometheus``); ``import dbos_async`` imports none."""
