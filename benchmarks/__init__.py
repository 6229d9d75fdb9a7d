"""Benchmarks: dbos_async against DBOS Transact and the raw-asyncpg floor (see README.md)."""
