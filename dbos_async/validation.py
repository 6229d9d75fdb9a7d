"""Checks on identifiers where they enter: workflow IDs, names, schema names."""

from __future__ import annotations

import re

MAX_ID_LENGTH = 1024
"""Longest workflow ID or registered name accepted (characters)."""

MAX_DURATION_SECONDS = 1e9
"""Longest timeout, delay or limiter period accepted (about 31 years); stored in ms."""

INT4_MAX = 2**31 - 1
"""Largest count (concurrency, limit) a claim statement takes."""

_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")


def check_identifier(value: object, what: str) -> str:
    """Return ``value`` if it is a usable workflow ID or name, else raise ValueError.

    Any non-empty Unicode string without NUL (which Postgres text cannot hold)
    and no longer than ``MAX_ID_LENGTH`` round-trips unchanged.
    """
    if not isinstance(value, str):
        raise ValueError(f"{what} must be a str, got {type(value).__name__}")
    if not value:
        raise ValueError(f"{what} must not be empty")
    if "\x00" in value:
        raise ValueError(f"{what} must not contain a NUL character")
    if len(value) > MAX_ID_LENGTH:
        raise ValueError(f"{what} is {len(value)} characters long; the limit is {MAX_ID_LENGTH}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:  # lone surrogates cannot be stored
        raise ValueError(f"{what} is not valid Unicode text: {exc.reason}") from exc
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
