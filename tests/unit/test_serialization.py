"""Serialization: round trips by annotation, clear errors, recorded exceptions."""

from __future__ import annotations

import dataclasses
import datetime
import math
import uuid
from decimal import Decimal
from typing import Any

import pydantic
import pytest

from dbos_async import MaxStepRetriesExceeded, SerializationError, WorkflowError
from dbos_async.serialization import (
    decode,
    decode_exception,
    decode_inputs,
    encode,
    encode_exception,
    encode_inputs,
)


class Item(pydantic.BaseModel):
    name: str
    blob: bytes


@dataclasses.dataclass
class Box:
    when: datetime.datetime
    ids: set[uuid.UUID]
    price: Decimal
    pair: tuple[int, str]
    raw: bytes
    item: Item | None = None


VALUES: list[tuple[Any, Any]] = [
    (Item(name="x", blob=b"abc"), Item),
    (
        Box(
            datetime.datetime(2026, 5, 6, 7, 8, 9, 123456, tzinfo=datetime.UTC),
            {uuid.UUID(int=1), uuid.UUID(int=2)},
            Decimal("1.10"),
            (3, "c"),
            b"\x00\xff\xfe",
            Item(name="y", blob=b"z"),
        ),
        Box,
    ),
    (b"\x80\x81 not utf-8", bytes),
    ({1, 2, 3}, set[int]),
    (frozenset({"a"}), frozenset[str]),
    ((1, (2, 3)), tuple[int, tuple[int, int]]),
    ({"k": [Decimal("0.1")]}, dict[str, list[Decimal]]),
    (None, int | None),
    (datetime.date(2026, 1, 1), datetime.date),
]


@pytest.mark.parametrize(("value", "annotation"), VALUES)
def test_values_round_trip_by_annotation(value: Any, annotation: Any) -> None:
    assert decode(encode(value), annotation) == value


def test_without_an_annotation_values_are_plain_json() -> None:
    assert decode(encode({"at": datetime.datetime(2026, 1, 1)})) == {"at": "2026-01-01T00:00:00"}
    assert decode(encode((1, 2))) == [1, 2]


@pytest.mark.parametrize("bad", [object(), lambda: 1, {"x": object()}, "\ud800 lone surrogate"])
def test_unencodable_values_raise_serialization_error(bad: Any) -> None:
    with pytest.raises(SerializationError, match="Cannot serialize the result of s"):
        encode(bad, "the result of s")


@dataclasses.dataclass
class Reading:
    value: float


class Gauge(pydantic.BaseModel):
    readings: list[float]


class Series(pydantic.RootModel[list[float]]):
    pass


NON_FINITE: list[tuple[Any, str]] = [
    (math.nan, "it is nan"),
    (-math.inf, "it is -inf"),
    ([1.0, math.inf], r"the value at \[1\] is inf"),
    ({"a": {"b": [0.5, math.nan]}}, r"the value at \['a'\]\['b'\]\[1\] is nan"),
    ((None, "null", Reading(math.inf)), r"the value at \[2\]\.value is inf"),
    ({"g": Gauge(readings=[1.0, -math.inf])}, r"the value at \['g'\]\['readings'\]\[1\] is -inf"),
    ({math.nan}, r"the value at \[\*\] is nan"),
    (Series([0.0, math.nan]), r"the value at \[1\] is nan"),
]


@pytest.mark.parametrize(("bad", "where"), NON_FINITE)
def test_nan_and_infinity_raise_naming_their_place(bad: Any, where: str) -> None:
    with pytest.raises(SerializationError, match=rf"Cannot serialize the result of s: {where}"):
        encode(bad, "the result of s")


def test_numpy_nan_and_infinity_raise_naming_their_place() -> None:
    np = pytest.importorskip("numpy")
    with pytest.raises(SerializationError, match=r"the value at \['x'\] is nan"):
        encode({"x": np.float32("nan")})
    with pytest.raises(SerializationError, match=r"the value at \[1\]\[0\] is inf"):
        encode(np.array([[1.0, 2.0], [np.inf, 3.0]]))
    assert encode(np.array([1.5, 2.5])) == "[1.5,2.5]"


def test_null_and_finite_floats_still_encode() -> None:
    assert encode({"a": None, "b": "null", "c": [1.5, -0.0, 1e308]}) == (
        '{"a":null,"b":"null","c":[1.5,-0.0,1e+308]}'
    )


def test_inputs_rebuild_each_parameter_including_varargs() -> None:
    def fn(a: Item, *rest: Decimal, when: datetime.date, **extra: set[int]) -> None: ...

    raw = encode_inputs(
        (Item(name="a", blob=b"1"), Decimal("1"), Decimal("2")),
        {"when": datetime.date(2026, 2, 3), "tags": {4}},
        "fn",
    )
    args, kwargs = decode_inputs(raw, fn)
    assert args == (Item(name="a", blob=b"1"), Decimal("1"), Decimal("2"))
    assert kwargs == {"when": datetime.date(2026, 2, 3), "tags": {4}}


def test_unserializable_inputs_name_the_workflow() -> None:
    with pytest.raises(SerializationError, match=r"the arguments of my\.workflow"):
        encode_inputs((object(),), {}, "my.workflow")


class CustomError(Exception):
    def __init__(self, code: int, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail


def test_exceptions_are_rebuilt_with_type_message_and_attributes() -> None:
    try:
        raise CustomError(404, "missing")
    except CustomError as exc:
        raw = encode_exception(exc)
    rebuilt = decode_exception(raw)
    assert isinstance(rebuilt, CustomError)
    assert (rebuilt.code, rebuilt.detail, str(rebuilt)) == (404, "missing", "404: missing")
    assert any("Recorded traceback" in note and "CustomError" in note for note in rebuilt.__notes__)


def test_nested_exceptions_survive() -> None:
    rebuilt = decode_exception(encode_exception(MaxStepRetriesExceeded("s", 3, KeyError("k"))))
    assert isinstance(rebuilt, MaxStepRetriesExceeded)
    assert isinstance(rebuilt.last_error, KeyError) and rebuilt.max_attempts == 3


def test_an_unimportable_type_becomes_workflow_error() -> None:
    raw = encode_exception(ValueError("boom")).replace('"builtins"', '"no_such_module_xyz"')
    rebuilt = decode_exception(raw)
    assert isinstance(rebuilt, WorkflowError)
    assert rebuilt.original_type == "no_such_module_xyz.ValueError"
    assert "boom" in str(rebuilt)
