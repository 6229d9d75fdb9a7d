"""dbos_async."""
