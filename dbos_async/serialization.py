"""JSON encoding of arguments, results and exceptions (orjson + pydantic).

Values are encoded with orjson; the types orjson does not know (Decimal,
bytes, sets, pydantic models) are lowered to JSON by ``_lower``. NaN and the
infinities are refused, since JSON has no such numbers. Decoding is plain JSON
unless an annotation is known, in which case pydantic rebuilds the annotated
type (datetimes, UUIDs, dataclasses, models, tuples, sets...).

Exceptions are recorded as JSON records that encoding can always produce, and
are rebuilt as their own type only from modules already imported: a record is
data from the database, never a reason to import code.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import enum
import functools
import inspect
import math
import sys
import traceback
from collections.abc import Callable, Iterable
from decimal import Decimal
from types import GetSetDescriptorType, MemberDescriptorType
from typing import Any, get_args, get_type_hints

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
        SerializationError: the value (or something inside it) cannot be encoded,
            or is a NaN or an infinity, which JSON cannot hold.
    """
    try:
        raw = orjson.dumps(value, default=_lower, option=_OPTIONS)
    except (TypeError, orjson.JSONEncodeError) as exc:
        raise SerializationError(f"Cannot serialize {what}: {exc}") from exc
    # orjson writes NaN and the infinities as null, which replay would read as
    # None: look for one, only when a null was written (rare on the hot path).
    if b"null" in raw:
        found = _non_finite(value)
        if found is not None:
            place, number = found
            where = f"the value at {place}" if place else "it"
            raise SerializationError(
                f"Cannot serialize {what}: {where} is {number!r}, and JSON has no NaN or infinity"
            )
    return raw.decode()


def _non_finite(value: Any) -> tuple[str, float] | None:
    """Where ``value`` holds a NaN or an infinity (an index path), and that number.

    Walks what orjson encodes: containers, dataclasses, enums, pydantic models
    (as ``_lower`` dumps them) and numpy values, if numpy is loaded.
    """
    if isinstance(value, float):
        return None if math.isfinite(value) else ("", value)
    if value is None or isinstance(value, str | int):
        return None
    items: Iterable[tuple[str, Any]]
    if isinstance(value, dict):
        items = ((f"[{k!r}]", v) for k, v in value.items())
    elif isinstance(value, list | tuple):
        items = ((f"[{i}]", v) for i, v in enumerate(value))
    elif isinstance(value, set | frozenset):
        items = (("[*]", v) for v in value)
    elif isinstance(value, BaseModel):
        return _non_finite(_lower(value))  # as it was encoded (a RootModel need not be a dict)
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        items = ((f".{f.name}", getattr(value, f.name)) for f in dataclasses.fields(value))
    elif isinstance(value, enum.Enum):
        items = ((".value", value.value),)
    else:
        return _non_finite_numpy(value)
    for step, item in items:
        found = _non_finite(item)
        if found is not None:
            return step + found[0], found[1]
    return None


def _non_finite_numpy(value: Any) -> tuple[str, float] | None:
    np: Any = sys.modules.get("numpy")  # only loaded numpy can have made the value
    if np is None:
        return None
    if isinstance(value, np.floating):
        return None if np.isfinite(value) else ("", float(value))
    if isinstance(value, np.ndarray) and value.dtype.kind == "f":
        bad = np.argwhere(~np.isfinite(value))
        if len(bad):
            index = tuple(int(i) for i in bad[0])
            return "".join(f"[{i}]" for i in index), float(value[index])
    return None


def _box(annotation: Any) -> type[BaseModel]:
    # A wrapper model carries the bytes config down to plain dataclasses and
    # TypedDicts, which take their parent's config; pydantic models keep their own.
    return create_model("Value", __config__=_BYTES_CONFIG, v=(annotation, ...))


_cached_box = functools.cache(_box)
_cached_box(Any)  # pydantic scans plugin entry points on its first model: do it at import


def decode(raw: str | None, annotation: Any = Any, *, strict: bool = False) -> Any:
    """Decode JSON text, rebuilding ``annotation`` when it is a concrete type.

    A value that does not validate as ``annotation`` comes back as plain
    JSON: what the first execution returned, when its code returned a value
    its annotation does not describe (Python checks no annotation). With
    ``strict``, used where a step's recorded outcome is replayed, a value
    that does not validate as an annotation naming a class of the code's (a
    dataclass, a model, an enum) raises instead: handing the code the dict
    it did not expect would fail later, far from the cause (its type changed
    since the value was recorded).

    Raises:
        SerializationError: ``strict``, and the value does not validate as a
            class ``annotation`` names.
    """
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
    except ValidationError as exc:
        if not strict or not names_a_class(annotation):
            return orjson.loads(raw)
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'][1:])) or 'the value'}: {e['msg']}"
            for e in exc.errors()[:3]
        )
        shown = raw if len(raw) <= 200 else raw[:199] + "…"
        raise SerializationError(
            f"the recorded value {shown} does not validate as {_type_name(annotation)} "
            f"(was the type changed since it was recorded?): {problems}"
        ) from None


_JSON_TYPES = frozenset({str, int, float, bool, type(None), list, dict, tuple, set, frozenset})


def names_a_class(annotation: Any) -> bool:
    """Whether ``annotation`` names a class beyond JSON's own types, at any depth."""
    if isinstance(annotation, type) and annotation not in _JSON_TYPES:
        return True
    return any(names_a_class(arg) for arg in get_args(annotation))


def _type_name(annotation: Any) -> str:
    name = getattr(annotation, "__qualname__", None)
    return (
        name
        if isinstance(name, str) and not getattr(annotation, "__args__", None)
        else repr(annotation)
    )


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


# -- exception records -------------------------------------------------------------------

_TEXT_LIMIT = 32_000  # characters kept of a message, a traceback or a string value
_DEPTH_LIMIT = 20  # nesting kept in recorded args and attributes
_NODE_LIMIT = 10_000  # values walked per record: shared references would make it exponential
_RECORD_LIMIT = 500_000  # past this, args and attributes are left out of a record
_SKIP: Any = object()


def encode_exception(exc: BaseException) -> str:
    r"""Record an exception as type, message, traceback text, args and attributes.

    Never raises: a workflow whose error could not be recorded would replay
    forever, running its step again each time. Lone surrogates are escaped
    (``\ud800``); long texts are cut in the middle; attributes JSON cannot
    hold (unencodable, cyclic, too deep) are left out, and positional args
    become their ``repr``. The C-level fields of built-in exceptions
    (``errno``, ``filename``...), which are not in ``__dict__``, are recorded too.
    """
    try:
        record = _Recorder().record(exc, 0, with_traceback=True)
        raw = orjson.dumps(record).decode()
        if len(raw) > _RECORD_LIMIT:
            record["args"], record["attrs"] = [record["message"]], {}
            raw = orjson.dumps(record).decode()
        return raw
    except Exception:  # a case missed above: a record must still be written
        return orjson.dumps(_bare_record(exc)).decode()


def _bare_record(exc: BaseException) -> dict[str, Any]:
    cls = type(exc)
    module = cls.__module__ if isinstance(cls.__module__, str) else "builtins"
    return {
        "type": _text(cls.__qualname__),
        "module": _text(module),
        "message": "<the error could not be recorded>",
        "args": [],
        "attrs": {},
        "traceback": "",
    }


class _Recorder:
    """Turns an exception into a record JSON can hold, within bounds."""

    def __init__(self) -> None:
        self.walking: set[int] = set()  # the containers being walked: meeting one is a cycle
        self.left = _NODE_LIMIT

    def record(self, exc: BaseException, depth: int, *, with_traceback: bool) -> dict[str, Any]:
        self.walking.add(id(exc))
        try:
            record = _bare_record(exc)
            record["message"] = _text(_str(exc))
            record["args"] = self.items(exc.args, depth + 1)
            record["attrs"] = self.mapping(_attrs(exc), depth + 1)
            fields = _fields(exc)
            if fields:
                record["fields"] = fields
            if with_traceback:
                record["traceback"] = _traceback(exc)
            else:
                del record["traceback"]
            return record
        finally:
            self.walking.discard(id(exc))

    def value(self, value: Any, depth: int) -> Any:
        """``value`` as JSON can hold it, or _SKIP."""
        if isinstance(value, str):
            return _text(value)
        if _plain(value):
            return value
        self.left -= 1
        if self.left < 0 or depth > _DEPTH_LIMIT or id(value) in self.walking:
            return _SKIP
        if isinstance(value, BaseException):
            return {"__exception__": self.record(value, depth, with_traceback=False)}
        if isinstance(value, list | tuple | dict):
            self.walking.add(id(value))
            try:
                if isinstance(value, dict):
                    return self.mapping(value, depth + 1)
                return self.items(value, depth + 1)
            finally:
                self.walking.discard(id(value))
        try:
            return orjson.loads(encode(value))
        except Exception:
            return _SKIP

    def items(self, values: Iterable[Any], depth: int) -> list[Any]:
        # Items keep their places (args make the message): what cannot be kept becomes text.
        kept = []
        for item in values:
            if self.left <= 0:
                break
            value = self.value(item, depth)
            kept.append(_placeholder(item) if value is _SKIP else value)
        return kept

    def mapping(self, values: dict[Any, Any], depth: int) -> dict[str, Any]:
        kept = {}
        for key, item in values.items():
            name = _text(_str(key))
            if name.startswith("__"):  # __notes__ and the like: the traceback shows them
                continue
            value = self.value(item, depth)
            if value is not _SKIP:
                kept[name] = value
        return kept


def _plain(value: Any) -> bool:
    """Whether orjson writes ``value`` as it is: None, a bool, a 64-bit int, a finite float."""
    kind = type(value)
    if kind is int:
        return bool(-(2**63) <= value < 2**64)
    if kind is float:
        return math.isfinite(value)
    return value is None or kind is bool


def _text(text: str, limit: int = _TEXT_LIMIT) -> str:
    """``text`` cut in the middle to about ``limit`` characters, lone surrogates escaped."""
    if len(text) > limit:
        half = limit // 2
        text = f"{text[:half]}\n[... {len(text) - 2 * half} characters cut ...]\n{text[-half:]}"
    if not text.isascii():
        # JSON text is UTF-8, which has no lone surrogates: keep them readable as \udxxx.
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def _str(value: Any) -> str:
    try:
        return str(value)
    except Exception:
        return f"<{type(value).__qualname__}: str() failed>"


def _placeholder(value: Any) -> str:
    if isinstance(value, BaseException | list | tuple | dict):
        return f"<{type(value).__qualname__}: cyclic, too deep or too large to record>"
    try:
        return _text(repr(value), 1_000)
    except Exception:
        return f"<{type(value).__qualname__} object: repr() failed>"


def _attrs(exc: BaseException) -> dict[str, Any]:
    try:
        return dict(vars(exc))
    except TypeError:  # no __dict__
        return {}


def _traceback(exc: BaseException) -> str:
    try:
        return _text("".join(traceback.format_exception(exc)))
    except Exception:
        return "<the traceback could not be formatted>"


def _field_names(cls: type) -> list[str]:
    """The fields built-in exception classes keep in C slots (``errno``...), not in ``__dict__``."""
    return [
        name
        for base in cls.__mro__
        if base.__module__ == "builtins"
        for name, attr in vars(base).items()
        if isinstance(attr, MemberDescriptorType | GetSetDescriptorType)
        and not name.startswith("__")
        and name != "args"
    ]


def _fields(exc: BaseException) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    for name in _field_names(type(exc)):
        try:
            value = getattr(exc, name)
        except Exception:
            continue
        if isinstance(value, str):
            fields[name] = _text(value)
        elif value is not None and _plain(value):
            fields[name] = value
    return fields


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
    cls = _recorded_class(module, qualname)
    if cls is not None:
        try:
            # Like unpickling: no __init__ call, so any constructor signature works.
            exc: BaseException = cls.__new__(cls)
            exc.args = tuple(_rebuild(record.get("args", [])))
            vars(exc).update(_rebuild(record.get("attrs", {})))
            fields = record.get("fields", {})
            for name in set(fields).intersection(_field_names(cls)):
                try:
                    setattr(exc, name, fields[name])
                except Exception:  # a value its slot refuses: the field stays unset
                    pass
            return exc
        except Exception:
            pass
    name = f"{module}.{qualname}"
    return WorkflowError(f"{name}: {record.get('message', '')}", original_type=name)


def _recorded_class(module: Any, qualname: Any) -> type[Exception] | None:
    """The exception class a record names, if its module is already imported.

    Never imports: a record comes from the database, and importing the module
    it names would run that module's code in the runtime, the client or the CLI.
    """
    if not isinstance(module, str) or not isinstance(qualname, str):
        return None
    found: Any = sys.modules.get(module)
    for part in qualname.split("."):
        if found is None:
            return None
        # Static: a module's __getattr__ (PEP 562) may import on demand.
        found = inspect.getattr_static(found, part, None)
    return found if isinstance(found, type) and issubclass(found, Exception) else None


_RECORDED = "__dbos_recorded__"  # a dunder: never encoded again (see _jsonable)
_TRACEBACK = "__dbos_traceback__"


def decode_exception(raw: str) -> BaseException:
    """Rebuild a recorded exception as its own type when possible, else WorkflowError."""
    record = orjson.loads(raw)
    exc = _exception_from_record(record)
    trace = record.get("traceback")
    trace = trace if isinstance(trace, str) else ""
    if not isinstance(exc, DBOSError) or isinstance(exc, WorkflowError):
        exc.add_note(f"Recorded traceback:\n{trace}")
    with contextlib.suppress(AttributeError, TypeError):  # an extension type may refuse
        setattr(exc, _RECORDED, True)
        setattr(exc, _TRACEBACK, trace)
    return exc


def recorded_traceback(exc: BaseException) -> str:
    """The traceback recorded with an exception rebuilt from a record ("" if none)."""
    trace = getattr(exc, _TRACEBACK, "")
    return trace if isinstance(trace, str) else ""


def type_name(exc: BaseException) -> str:
    """The qualified name of the type an exception was raised as.

    For a record whose type could not be rebuilt (a ``WorkflowError`` in a
    process without the application's code, such as the CLI), the type it
    names. Built-in types go by their bare name.
    """
    if isinstance(exc, WorkflowError) and exc.original_type:
        return exc.original_type
    cls = type(exc)
    module = cls.__module__ if isinstance(cls.__module__, str) else "builtins"
    return cls.__qualname__ if module == "builtins" else f"{module}.{cls.__qualname__}"


def error_message(exc: BaseException) -> str:
    """An exception's message, without the type name a ``WorkflowError`` puts before it."""
    text = str(exc)
    if isinstance(exc, WorkflowError) and exc.original_type:
        return text.removeprefix(f"{exc.original_type}: ")
    return text


def is_recorded(exc: BaseException) -> bool:
    """Whether ``exc`` was rebuilt from a record: an earlier outcome, not raised now."""
    return getattr(exc, _RECORDED, False) is True
