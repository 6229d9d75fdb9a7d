"""The public surface: a sorted __all__, public reprs, and the contract's errors."""

from __future__ import annotations

import types

import dbos_async
from dbos_async import errors

CONTRACT_ERRORS = """WorkflowNotFoundError WorkflowConflictError NonDeterministicWorkflowError
WorkflowCancelledError MaxRecoveryAttemptsExceededError MaxStepRetriesExceeded
QueueDeduplicatedError SerializationError WorkflowError NotInWorkflowError
DatabaseUnavailableError""".split()


def test_all_is_sorted_and_lists_exactly_the_public_names() -> None:
    # ruff's order (RUF022): constant-like names (DBOS) first, then the rest.
    assert dbos_async.__all__ == sorted(dbos_async.__all__, key=lambda n: (not n.isupper(), n))
    public = {
        name
        for name, value in vars(dbos_async).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert set(dbos_async.__all__) == public


def test_public_names_claim_the_package_as_their_module() -> None:
    for name in dbos_async.__all__:
        assert getattr(dbos_async, name).__module__ == "dbos_async", name


def test_the_contract_errors_exist_and_share_one_root() -> None:
    for name in CONTRACT_ERRORS:
        cls = getattr(errors, name)
        assert issubclass(cls, errors.DBOSError) and cls.__doc__, name
        assert getattr(dbos_async, name) is cls
