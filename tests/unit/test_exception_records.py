"""Exception records: encoding never fails, replays keep C-level fields, decoding never imports."""

from __future__ import annotations

import importlib
import sys
import types
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from dbos_async import WorkflowError
from dbos_async.serialization import decode_exception, encode_exception

# -- encoding is total ---------------------------------------------------------------------


class StrFails(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no str for you")


class ReprFails:
    def __repr__(self) -> str:
        raise RuntimeError("no repr for you")


def _lone_surrogate_message() -> BaseException:
    return ValueError("bad \ud800 input")


def _lone_surrogate_everywhere() -> BaseException:
    exc = ValueError("\udcff", {"k\ud800": "v\udfff"})
    exc.detail = "x\ud800y"  # type: ignore[attr-defined]
    exc.add_note("note \ud800")
    return exc


def _surrogate_in_the_cause() -> BaseException:
    try:
        try:
            raise ValueError("inner \ud800")  # not KeyError: its str() is a repr, escaped
        except ValueError as inner:
            raise RuntimeError("outer") from inner
    except RuntimeError as outer:
        return outer


def _cyclic_dict_attribute() -> BaseException:
    exc = ValueError("cyclic")
    loop: dict[str, Any] = {}
    loop["me"] = loop
    exc.loop = loop  # type: ignore[attr-defined]
    return exc


def _self_reference() -> BaseException:
    exc = ValueError("self")
    exc.me = exc  # type: ignore[attr-defined]
    exc.args = ("self", exc)
    return exc


def _deep_attribute() -> BaseException:
    deep: list[Any] = []
    for _ in range(100_000):
        deep = [deep]
    exc = ValueError("deep")
    exc.deep = deep  # type: ignore[attr-defined]
    return exc


def _shared_references() -> BaseException:
    # A DAG: tiny in memory, 2**60 paths when walked naively.
    node: list[Any] = [1]
    for _ in range(60):
        node = [node, node]
    exc = ValueError("dag")
    exc.node = node  # type: ignore[attr-defined]
    return exc


def _unencodable_attributes() -> BaseException:
    exc = ValueError(object(), ReprFails(), float("nan"), 2**100)
    exc.obj = object()  # type: ignore[attr-defined]
    exc.bad_repr = ReprFails()  # type: ignore[attr-defined]
    exc.nan = float("inf")  # type: ignore[attr-defined]
    return exc


def _huge_message() -> BaseException:
    return ValueError("x" * 5_000_000)


def _long_chain() -> BaseException:
    exc: BaseException | None = None
    for i in range(3_000):
        link = ValueError(f"link {i}")
        link.__context__ = exc
        exc = link
    assert exc is not None
    return exc


def _nested_exceptions() -> BaseException:
    exc = ValueError("outermost")
    for i in range(5_000):
        exc = ValueError(f"level {i}", exc)
    return exc


BAD: dict[str, Callable[[], BaseException]] = {
    "lone surrogate in the message": _lone_surrogate_message,
    "lone surrogates in args, attributes, keys and notes": _lone_surrogate_everywhere,
    "lone surrogate in the cause": _surrogate_in_the_cause,
    "cyclic attribute": _cyclic_dict_attribute,
    "self reference": _self_reference,
    "deep attribute": _deep_attribute,
    "shared references": _shared_references,
    "unencodable attributes": _unencodable_attributes,
    "raising __str__": StrFails,
    "huge message": _huge_message,
    "long chain": _long_chain,
    "nested exceptions": _nested_exceptions,
}

RECORD_LIMIT = 1_000_000


@pytest.mark.parametrize("make", list(BAD.values()), ids=list(BAD))
def test_encoding_an_exception_never_fails(make: Callable[[], BaseException]) -> None:
    exc = make()
    raw = encode_exception(exc)
    record = orjson.loads(raw)  # valid JSON, valid UTF-8
    assert record["type"] == type(exc).__qualname__
    assert len(raw) <= RECORD_LIMIT
    rebuilt = decode_exception(raw)
    assert isinstance(rebuilt, type(exc) | WorkflowError)
    if not isinstance(rebuilt, StrFails):  # whose __str__ raises again, being its own type
        assert isinstance(str(rebuilt), str)


def test_lone_surrogates_are_escaped_readably() -> None:
    rebuilt = decode_exception(encode_exception(_lone_surrogate_message()))
    assert isinstance(rebuilt, ValueError)
    assert str(rebuilt) == "bad \\ud800 input"
    rebuilt = decode_exception(encode_exception(_lone_surrogate_everywhere()))
    assert rebuilt.args == ("\\udcff", {"k\\ud800": "v\\udfff"})
    assert rebuilt.detail == "x\\ud800y"  # type: ignore[attr-defined]


def test_what_cannot_be_kept_is_left_out_and_positions_stay() -> None:
    rebuilt = decode_exception(encode_exception(_unencodable_attributes()))
    assert isinstance(rebuilt, ValueError)
    assert not hasattr(rebuilt, "obj") and not hasattr(rebuilt, "nan")
    # Positional args keep their places, as text where the value could not be kept.
    assert len(rebuilt.args) == 4
    assert rebuilt.args[0].startswith("<object object at")
    assert "repr() failed" in rebuilt.args[1]
    rebuilt = decode_exception(encode_exception(_cyclic_dict_attribute()))
    assert rebuilt.loop == {}  # type: ignore[attr-defined]


def test_a_raising_str_is_recorded_readably() -> None:
    record = orjson.loads(encode_exception(StrFails()))
    assert "str() failed" in record["message"]
    assert "StrFails" in record["traceback"]


def test_huge_texts_are_cut_in_the_middle() -> None:
    record = orjson.loads(encode_exception(_huge_message()))
    assert len(record["message"]) < 100_000
    assert "characters cut" in record["message"]
    # The end of a traceback names the exception: it is kept.
    assert record["traceback"].rstrip().endswith("x")
    chain = orjson.loads(encode_exception(_long_chain()))["traceback"]
    assert "characters cut" in chain and chain.rstrip().endswith("link 2999")


# -- fields that live in C slots -----------------------------------------------------------


def test_os_errors_keep_errno_and_filenames() -> None:
    original = FileNotFoundError(2, "No such file or directory", "a.txt")
    rebuilt = decode_exception(encode_exception(original))
    assert type(rebuilt) is FileNotFoundError
    assert (rebuilt.errno, rebuilt.strerror, rebuilt.filename, rebuilt.filename2) == (
        2,
        "No such file or directory",
        "a.txt",
        None,
    )
    assert str(rebuilt) == str(original)
    two = OSError(18, "Invalid cross-device link", "src", None, "dst")
    rebuilt = decode_exception(encode_exception(two))
    assert (rebuilt.filename, rebuilt.filename2, str(rebuilt)) == ("src", "dst", str(two))


def test_other_builtin_fields_survive() -> None:
    imp = decode_exception(encode_exception(ImportError("no", name="pkg", path="/p")))
    assert (imp.name, imp.path, imp.msg) == ("pkg", "/p", "no")  # type: ignore[attr-defined]
    stop = decode_exception(encode_exception(StopIteration(5)))
    assert stop.value == 5  # type: ignore[attr-defined]
    syntax = decode_exception(encode_exception(SyntaxError("bad", ("f.py", 3, 4, "x = (", 3, 5))))
    assert (syntax.filename, syntax.lineno, syntax.text) == ("f.py", 3, "x = (")  # type: ignore[attr-defined]


def test_old_records_without_fields_still_decode() -> None:
    old = (
        '{"type":"FileNotFoundError","module":"builtins","message":"[Errno 2] gone: \'a\'",'
        '"args":[2,"gone"],"attrs":{},"traceback":"Traceback..."}'
    )
    rebuilt = decode_exception(old)
    assert type(rebuilt) is FileNotFoundError and rebuilt.args == (2, "gone")


# -- decoding never imports ----------------------------------------------------------------


@pytest.fixture
def planted_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, Path]]:
    """A module on sys.path, not imported yet, that leaves a marker file when imported."""
    name = f"planted_{uuid.uuid4().hex}"
    marker = tmp_path / "imported"
    (tmp_path / f"{name}.py").write_text(
        f"open({str(marker)!r}, 'w').close()\n\nclass PlantedError(Exception):\n    pass\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        yield name, marker
    finally:
        sys.modules.pop(name, None)


def _record(module: str, qualname: str) -> str:
    return orjson.dumps(
        {"type": qualname, "module": module, "message": "boom", "args": ["boom"], "attrs": {}}
    ).decode()


def test_a_record_naming_a_module_not_imported_does_not_import_it(
    planted_module: tuple[str, Path],
) -> None:
    name, marker = planted_module
    rebuilt = decode_exception(_record(name, "PlantedError"))
    assert isinstance(rebuilt, WorkflowError)
    assert rebuilt.original_type == f"{name}.PlantedError"
    assert "boom" in str(rebuilt)
    assert not marker.exists() and name not in sys.modules
    # Once the application has imported it, its exceptions rebuild as their own type.
    module = importlib.import_module(name)
    assert marker.exists()
    rebuilt = decode_exception(_record(name, "PlantedError"))
    assert type(rebuilt) is module.PlantedError and rebuilt.args == ("boom",)


def test_a_module_level_getattr_is_not_called(monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[str] = []
    lazy = types.ModuleType("lazy_planted")

    def __getattr__(attr: str) -> Any:  # PEP 562: would import submodules on demand
        asked.append(attr)
        raise AttributeError(attr)

    lazy.__getattr__ = __getattr__  # type: ignore[method-assign]
    monkeypatch.setitem(sys.modules, "lazy_planted", lazy)
    rebuilt = decode_exception(_record("lazy_planted", "LazyError"))
    assert isinstance(rebuilt, WorkflowError) and asked == []


def test_builtins_rebuild_as_their_own_type() -> None:
    rebuilt = decode_exception(_record("builtins", "KeyError"))
    assert type(rebuilt) is KeyError and rebuilt.args == ("boom",)
