"""Checks on identifiers where they enter: workflow IDs, names, schema names."""

from __future__ import annotations

import re

MAX_ID_BYTES = 1024
"""Longest workflow ID, name or key accepted, in UTF-8 bytes (what Postgres stores and indexes).

A btree index row holds at most 2,704 bytes (Postgres compresses long values
in index rows, but not text that does not compress). A limit in characters let
1,024 four-byte characters (4,096 bytes) through. Most indexes hold one or two identifiers plus
fixed-size columns (``(workflow_id, key)``, ``(queue_name, deduplication_id)``,
``(destination_id, topic, message_id)``): two of 1,024 bytes make index rows
of about 2,070 bytes. The one with three, ``(queue_name, queue_partition_key,
executor_id)``, also fits while the executor ID stays under about 600 bytes:
executor IDs are held to ``MAX_EXECUTOR_ID_BYTES``.
"""

MAX_EXECUTOR_ID_BYTES = 256
"""Longest executor ID accepted, in UTF-8 bytes (see ``MAX_ID_BYTES``)."""

MAX_DURATION_SECONDS = 1e9
"""Longest timeout, delay or limiter period accepted (about 31 years); stored in ms."""

INT4_MAX = 2**31 - 1
"""Largest count (concurrency, limit) a claim statement takes."""

_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")


def check_identifier(value: object, what: str, limit: int = MAX_ID_BYTES) -> str:
    """Return ``value`` if it is a usable workflow ID or name, else raise ValueError.

    Any non-empty Unicode string without NUL (which Postgres text cannot hold)
    or lone surrogates (which UTF-8 cannot encode), and at most ``limit``
    bytes in UTF-8, round-trips unchanged.
    """
    if not isinstance(value, str):
        raise ValueError(f"{what} must be a str, got {type(value).__name__}")
    if not value:
        raise ValueError(f"{what} must not be empty")
    if "\x00" in value:
        raise ValueError(f"{what} must not contain a NUL character")
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError as exc:  # lone surrogates cannot be stored
        raise ValueError(f"{what} is not valid Unicode text: {exc.reason}") from exc
    if size > limit:
        raise ValueError(f"{what} is {size} bytes in UTF-8; the limit is {limit}")
    return value


def check_seconds(value: object, what: str, *, zero_ok: bool = False) -> float:
    """Return ``value`` if it is a usable duration in seconds, else raise ValueError.

    Finite, positive (or zero with ``zero_ok``), and at most
    ``MAX_DURATION_SECONDS``: a longer one would overflow the millisecond
    columns, and fail every batch it joined.
    """
    seconds = float(value) if isinstance(value, int | float) and not isinstance(value, bool) else -1
    # NaN fails both comparisons; inf fails the bound.
    if not (seconds >= 0 if zero_ok else seconds > 0) or not seconds <= MAX_DURATION_SECONDS:
        raise ValueError(
            f"{what} must be a number {'>= 0' if zero_ok else '> 0'} and at most "
            f"{MAX_DURATION_SECONDS:.0e} seconds, got {value!r}"
        )
    return seconds


def check_workflow_id(value: object) -> str:
    """Validate a workflow ID."""
    return check_identifier(value, "workflow ID")


def check_schema_name(value: str) -> str:
    """Validate the system schema name: it is an identifier, so it is never a parameter."""
    if not _SCHEMA_NAME.fullmatch(value):
        raise ValueError(
            f"schema name {value!r} must match [a-z_][a-z0-9_]* and be at most 63 characters"
        )
    return value
