"""JSON encoding of arguments, results and exceptions (orjson + pydantic).

Values are encoded with orjson; the types orjson does not know (Decimal,
bytes, sets, pydantic models) are lowered to JSON by ``_lower``. Decoding is
plain JSON unless an annotation is known, in which case pydantic rebuilds the
annotated type (datetimes, UUIDs, dataclasses, models, tuples, sets...).
"""

from __future__ import annotations

import base64
import contextlib
import functools
import importlib
import inspect
import traceback
from collections.abc import Callable
from decimal import Decimal
from typing import Any, get_type_hints

import orjson

# Imported by name: pydantic loads these lazily, and an import is file I/O that
# must not happen on the event loop at the first decode.
from pydantic import BaseModel, ConfigDict, ValidationError, create_model

from dbos_async.errors import DBOSError, SerializationError, WorkflowError

_OPTIONS = orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY
_BYTES_CONFIG = ConfigDict(ser_json_bytes="base64", val_json_bytes="base64")


def _lower(value: Any) -> Any:
    """Turn a value orjson cannot encode into one it can."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, set | frozenset):
        return list(value)
    raise TypeError(f"Type is not JSON serializable: {type(value).__qualname__}")


def encode(value: Any, what: str = "value") -> str:
    """Encode ``value`` as JSON text.

    Raises:
        SerializationError: the value (or something inside it) cannot be encoded.
    """
    try:
        return orjson.dumps(value, default=_lower, option=_OPTIONS).decode()
    except (TypeError, orjson.JSONEncodeError) as exc:
        raise SerializationError(f"Cannot serialize {what}: {exc}") from exc


def _box(annotation: Any) -> type[BaseModel]:
    # A wrapper model carries the bytes config down to plain dataclasses and
    # TypedDicts, which take their parent's config; pydantic models keep their own.
    return create_model("Value", __config__=_BYTES_CONFIG, v=(annotation, ...))


_cached_box = functools.cache(_box)
_cached_box(Any)  # pydantic scans plugin entry points on its first model: do it at import


def decode(raw: str | None, annotation: Any = Any) -> Any:
    """Decode JSON text, rebuilding ``annotation`` when it is a concrete type."""
    if raw is None:
        return None
    if annotation is Any or annotation is inspect.Parameter.empty:
        return orjson.loads(raw)
    try:
        box = _cached_box(annotation)
    except TypeError:  # an unhashable annotation: build the model uncached
        box = _box(annotation)
    try:
        return box.model_validate_json('{"v":' + raw + "}").v  # type: ignore[attr-defined]
    except ValidationError:
        # A recorded value that no longer matches its annotation is still returned.
        return orjson.loads(raw)


def encode_inputs(args: tuple[Any, ...], kwargs: dict[str, Any], name: str) -> str:
    """Encode a call's arguments; raises SerializationError naming the workflow."""
    return encode({"args": list(args), "kwargs": kwargs}, f"the arguments of {name}")


def _hints(fn: Callable[..., Any]) -> dict[str, Any]:
    try:
        return get_type_hints(fn)
    except Exception:  # unresolvable forward references: fall back to plain JSON
        return {}


def decode_inputs(raw: str, fn: Callable[..., Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Decode recorded arguments, rebuilding each parameter's annotated type."""
    record = orjson.loads(raw)
    args: list[Any] = record.get("args", [])
    kwargs: dict[str, Any] = record.get("kwargs", {})
    hints = _hints(fn)
    if not hints:
        return tuple(args), kwargs
    params = list(inspect.signature(fn).parameters.values())

    def rebuild(value: Any, param: inspect.Parameter | None) -> Any:
        if param is None or param.name not in hints:
            return value
        return decode(orjson.dumps(value).decode(), hints[param.name])

    by_name = {p.name: p for p in params}
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    star = next((p for p in params if p.kind is p.VAR_POSITIONAL), None)
    new_args = tuple(
        rebuild(v, positional[i] if i < len(positional) else star) for i, v in enumerate(args)
    )
    star_kw = next((p for p in params if p.kind is p.VAR_KEYWORD), None)
    new_kwargs = {k: rebuild(v, by_name.get(k, star_kw)) for k, v in kwargs.items()}
    return new_args, new_kwargs


def return_annotation(fn: Callable[..., Any]) -> Any:
    """The annotated return type of ``fn``, or Any."""
    return _hints(fn).get("return", Any)


def encode_exception(exc: BaseException) -> str:
    """Record an exception as type, message, traceback text, args and attributes."""
    return orjson.dumps(_exception_record(exc, with_traceback=True)).decode()


def _exception_record(exc: BaseException, *, with_traceback: bool) -> dict[str, Any]:
    record: dict[str, Any] = {
        "type": type(exc).__qualname__,
        "module": type(exc).__module__,
        "message": str(exc),
        "args": _jsonable(list(exc.args)),
        "attrs": {k: v for k, v in _jsonable(vars(exc)).items() if v is not _SKIP},
    }
    if with_traceback:
        record["traceback"] = "".join(traceback.format_exception(exc))
    return record


_SKIP: Any = object()


def _jsonable(value: Any) -> Any:
    """Keep what JSON can hold; nested exceptions become records; drop the rest."""
    if isinstance(value, BaseException):
        return {"__exception__": _exception_record(value, with_traceback=False)}
    if isinstance(value, list | tuple):
        return [v for v in (_jsonable(x) for x in value) if v is not _SKIP]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items() if not str(k).startswith("__")}
    try:
        return orjson.loads(encode(value))
    except SerializationError:
        return _SKIP


def _rebuild(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {"__exception__"}:
            return _exception_from_record(value["__exception__"])
        return {k: _rebuild(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_rebuild(v) for v in value]
    return value


def _exception_from_record(record: dict[str, Any]) -> BaseException:
    qualname, module = record.get("type", "Exception"), record.get("module", "builtins")
    cls: Any
    try:
        cls = importlib.import_module(module)
        for part in qualname.split("."):
            cls = getattr(cls, part)
    except (ImportError, AttributeError):
        cls = None
    if isinstance(cls, type) and issubclass(cls, Exception):
        try:
            # Like unpickling: no __init__ call, so any constructor signature works.
            exc: BaseException = cls.__new__(cls)
            exc.args = tuple(_rebuild(record.get("args", [])))
            vars(exc).update(_rebuild(record.get("attrs", {})))
            return exc
        except Exception:
            pass
    name = f"{module}.{qualname}"
    return WorkflowError(f"{name}: {record.get('message', '')}", original_type=name)


_RECORDED = "__dbos_recorded__"  # a dunder: never encoded again (see _jsonable)


def decode_exception(raw: str) -> BaseException:
    """Rebuild a recorded exception as its own type when possible, else WorkflowError."""
    record = orjson.loads(raw)
    exc = _exception_from_record(record)
    if not isinstance(exc, DBOSError) or isinstance(exc, WorkflowError):
        exc.add_note(f"Recorded traceback:\n{record.get('traceback', '')}")
    with contextlib.suppress(AttributeError, TypeError):  # an extension type may refuse
        setattr(exc, _RECORDED, True)
    return exc


def is_recorded(exc: BaseException) -> bool:
    """Whether ``exc`` was rebuilt from a record: an earlier outcome, not raised now."""
    return getattr(exc, _RECORDED, False) is True
