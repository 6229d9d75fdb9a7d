"""Every ```python block of README.md compiles, type-checks against the package, and runs if it can.

Earlier READMEs called a function they never defined and passed keyword
arguments the package does not have (issue 19, item 7). Each block is found by
its fence, wherever the prose moves it, and every failure names its README line.

- **Compiled**, all of them (top-level ``await`` allowed).
- **Type-checked**, all of them, by one ``mypy`` run with the repo's strict
  configuration. Each block becomes a module: its preamble (the imports and
  definitions it takes from earlier blocks or from the prose, in ``BLOCKS``
  below, keyed by the block's first line), then the block, inside an
  ``async def`` when it awaits at top level. ``empty-body`` is off: in a README,
  ``def f() -> bool: ...`` means "your code here".
- **Executed** against a fresh database, in a runtime launched on it:

  - "Concurrency inside workflows" (``enrich_all``): its workflow is called
    with stand-in ``fetch``/``store`` steps; the result and the branch of each
    step are checked.
  - "Queues and schedules": the whole block runs (queue, enqueues, dedup
    option, scheduled workflow); the first enqueued workflow's result is checked.

- **Imported only** (its definitions run, so decorator options are checked
  at runtime too; nothing is called): the opening checkout example, whose SQL is
  elided (``WHERE ...``), whose ``main()`` connects to a fixed URL and which
  sleeps 8 s.
- **Type-checked only**: "Managing workflows", which acts on an existing
  ``order-42`` (cancels, resumes, forks at step 3, deletes it) and connects a
  ``DBOSClient`` to a fixed URL. A block added later, with no entry in
  ``BLOCKS``, is compiled and type-checked with no preamble.
"""

from __future__ import annotations

import ast
import inspect
import os
import re
import subprocess
import sys
import textwrap
import traceback
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import CodeType
from typing import Any, Literal

import pytest

from dbos_async import DBOS, SetWorkflowID
from dbos_async.queue import forget_queue, registered_queues
from dbos_async.scheduler import forget_schedule, schedules

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
Namespace = dict[str, Any]


@dataclass(frozen=True)
class Block:
    """A ```python block: ``line`` is its fence's line in README.md (1-based)."""

    line: int
    code: str

    @property
    def first(self) -> str:
        """Its first non-blank line: the key of its entry in ``BLOCKS``."""
        return next((s.strip() for s in self.code.splitlines() if s.strip()), "")

    @property
    def where(self) -> str:
        return f"README.md:{self.line}"

    def readme_line(self, index: int) -> int:
        """The README line of the block's line ``index`` (1-based)."""
        return self.line + index


@dataclass(frozen=True)
class Use:
    """How a block is checked beyond compiling and type-checking.

    ``preamble``: what it assumes from earlier blocks or the prose. ``mode``:
    ``"check"`` only, ``"import"`` (its top level runs, no runtime), or
    ``"run"`` (it runs in a launched runtime, then ``exercise`` gets its names).
    """

    preamble: str = ""
    mode: Literal["check", "import", "run"] = "check"
    exercise: Callable[[Namespace], Awaitable[None]] | None = None


def _readme_blocks() -> list[Block]:
    lines = README.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    opened: tuple[int, str, bool] | None = None  # fence line, indent, is python
    for number, text in enumerate(lines, 1):
        if opened is None:
            fence = re.fullmatch(r"(\s*)```(.*)", text)
            if fence is not None:
                info = fence[2].split()
                opened = (number, fence[1], bool(info) and info[0] in ("python", "py"))
        elif re.fullmatch(r"\s*```\s*", text):
            start, indent, python = opened
            if python:
                body = [s.removeprefix(indent) for s in lines[start : number - 1]]
                blocks.append(Block(start, "\n".join(body) + "\n"))
            opened = None
    return blocks


async def _exercise_enrich_all(ns: Namespace) -> None:
    with SetWorkflowID("readme-enrich"):
        assert await ns["enrich_all"](["a", "b"]) == ["a=A", "b=B"]
    steps = await DBOS.list_workflow_steps("readme-enrich")
    # Each item is its own branch; fetch then store within it.
    assert sorted((s.branch, s.name.rsplit(".", 1)[-1]) for s in steps) == [
        ("0", "fetch"),
        ("0", "store"),
        ("1", "fetch"),
        ("1", "store"),
    ], steps


async def _exercise_queues(ns: Namespace) -> None:
    assert await ns["handle"].get_result() == "card charged 100"
    queued = await DBOS.list_queued_workflows(queue_name="payments")
    assert [s.deduplication_id for s in queued] == ["order-7"], queued


# Keyed by the block's first line. Keep each preamble to what the block needs.
_PATCH_STEPS = """
from dbos_async import DBOS

URL = "postgresql://postgres@localhost/app"

@DBOS.step()
async def charge(order_id: str) -> None: ...

@DBOS.step()
async def compute_tax(order_id: str) -> None: ...

@DBOS.step()
async def ship(order_id: str) -> None: ...
"""

# "Testing your workflows": the onboarding workflow of the section's first block.
_ONBOARDING = """
import pytest
from dbos_async import DBOS
from dbos_async.testing import TestEnvironment

@DBOS.step()
async def send_reminder(user: str) -> str:
    return f"reminded {user}"

@DBOS.workflow()
async def onboarding(user: str) -> str:
    await DBOS.sleep(3 * 86400)
    return await send_reminder(user)
"""

BLOCKS: dict[str, Use] = {
    # The opening example: elided SQL, a fixed URL, an 8 s sleep.
    "from dbos_async import DBOS, SetWorkflowID": Use(mode="import"),
    # "Concurrency inside workflows": fetch and store are the README's own stand-ins.
    "async def enrich(item: str) -> str:": Use(
        preamble="""
            import asyncio
            from dbos_async import DBOS

            @DBOS.step()
            async def fetch(item: str) -> str:
                return item.upper()

            @DBOS.step()
            async def store(item: str, raw: str) -> str:
                return f"{item}={raw}"
        """,
        mode="run",
        exercise=_exercise_enrich_all,
    ),
    # "Managing workflows": acts on an existing order-42 and a fixed URL.
    "from datetime import UTC, datetime, timedelta": Use(),
    # "Deploying new code", "Patching": the checkout's steps are the README's stand-ins.
    "dbos = DBOS(database_url=URL, enable_patching=True)": Use(preamble=_PATCH_STEPS),
    "await charge(order_id)": Use(preamble=_PATCH_STEPS + 'order_id = "order-42"\n'),
    # "Portable histories": two fixed URLs.
    "from dbos_async import DBOSClient": Use(
        preamble='source_url = target_url = "postgresql://postgres@localhost/app"\n'
    ),
    # "Testing your workflows": test functions, defined (decorators and marks
    # applied) but not called; examples/test_reminder.py runs the same story
    # (tests/integration/test_examples_reminder.py).
    "from dbos_async import DBOS": Use(mode="import"),
    "import pytest": Use(preamble=_ONBOARDING, mode="import"),
    "async def test_provider_down(dbos_env: TestEnvironment) -> None:": Use(
        preamble=_ONBOARDING, mode="import"
    ),
    "async def test_recorded_histories_still_replay(dbos_env: TestEnvironment) -> None:": Use(
        preamble=_ONBOARDING, mode="import"
    ),
    "from datetime import UTC, datetime": Use(preamble=_ONBOARDING, mode="import"),
    # "Queues and schedules".
    "from dbos_async import DBOS, Queue, SetEnqueueOptions": Use(
        preamble="""
            from datetime import datetime  # imported by "Managing workflows"
            from dbos_async import DBOS

            @DBOS.workflow()
            async def charge(card: str, amount: int) -> str:
                return f"{card} charged {amount}"
        """,
        mode="run",
        exercise=_exercise_queues,
    ),
}

ALL = _readme_blocks()


def _use(block: Block) -> Use:
    return BLOCKS.get(block.first, Use())


def _preamble(block: Block) -> str:
    return textwrap.dedent(_use(block).preamble).strip("\n")


def _compile(block: Block) -> CodeType:
    """The block's code, compiled so that its line numbers are README's."""
    padded = "\n" * block.line + block.code
    code: CodeType = compile(padded, str(README), "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    return code


def _compiles(block: Block) -> bool:
    try:
        _compile(block)
    except SyntaxError:
        return False
    return True


def _awaits_at_top_level(block: Block) -> bool:
    return bool(_compile(block).co_flags & inspect.CO_COROUTINE)


def _ids(blocks: list[Block]) -> list[str]:
    return [b.where for b in blocks]


def test_the_readme_has_python_blocks() -> None:
    assert ALL, "no ```python block found in README.md"


def test_every_entry_names_a_block() -> None:
    firsts = {b.first for b in ALL}
    stale = [key for key in BLOCKS if key not in firsts]
    assert not stale, f"BLOCKS has entries for no ```python block of README.md: {stale}"


@pytest.mark.parametrize("block", ALL, ids=_ids(ALL))
def test_block_compiles(block: Block) -> None:
    try:
        _compile(block)
    except SyntaxError as exc:
        pytest.fail(f"```python block at {block.where}: README.md:{exc.lineno}: {exc.msg}")


# -- type-checking ------------------------------------------------------------


@dataclass(frozen=True)
class Module:
    """A block as a module for mypy: the preamble's lines, then the block's."""

    block: Block
    name: str
    source: str
    head: int  # lines before the block's first line

    def where(self, line: int) -> str:
        if line > self.head:
            return f"README.md:{self.block.readme_line(line - self.head)}"
        return f"line {line} of the preamble of {self.block.where}"


def _module(block: Block) -> Module:
    head = _preamble(block).splitlines()
    body = block.code.splitlines()
    if _awaits_at_top_level(block):
        head.append("async def _readme_block() -> None:")
        body = [f"    {s}" if s.strip() else s for s in body]
    return Module(block, f"readme_{block.line}", "\n".join([*head, *body]) + "\n", len(head))


MYPY_LINE = re.compile(r"(?P<path>.+?\.py):(?P<line>\d+): (?P<kind>error|note): (?P<msg>.*)")


@pytest.fixture(scope="module")
def mypy_reports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[str]]:
    """One mypy run over every block that compiles: README-located messages per block."""
    folder = tmp_path_factory.mktemp("readme")
    modules = {m.name: m for m in (_module(b) for b in ALL if _compiles(b))}
    for name, module in modules.items():
        (folder / f"{name}.py").write_text(module.source, encoding="utf-8")
    command = [
        *(sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml")),
        *("--cache-dir", os.devnull, "--disable-error-code", "empty-body"),
        *(
            "--no-warn-unused-configs",
            "--no-error-summary",
            "--hide-error-context",
            "--no-color-output",
            "--no-pretty",
        ),
        *sorted(str(folder / f"{name}.py") for name in modules),
    ]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    if done.returncode not in (0, 1):
        pytest.fail(f"mypy did not run (exit {done.returncode}):\n{done.stderr}{done.stdout}")
    reports: dict[str, list[str]] = {b.where: [] for b in ALL}
    for text in done.stdout.splitlines():
        match = MYPY_LINE.fullmatch(text)
        found = modules.get(Path(match["path"]).stem) if match else None
        if match and found:  # errors elsewhere (the package itself) are `make type`'s
            where = found.where(int(match["line"]))
            reports[found.block.where].append(f"{where}: {match['kind']}: {match['msg']}")
    return reports


@pytest.mark.parametrize("block", ALL, ids=_ids(ALL))
def test_block_type_checks(block: Block, mypy_reports: dict[str, list[str]]) -> None:
    if not _compiles(block):
        pytest.fail(f"```python block at {block.where} does not compile (see test_block_compiles)")
    errors = mypy_reports[block.where]
    assert not errors, f"```python block at {block.where} fails mypy:\n" + "\n".join(errors)


# -- execution ----------------------------------------------------------------


@pytest.fixture
def forget_declarations() -> Iterator[None]:
    """Queues and schedules a block declares are dropped after its test."""
    queues = {q.name for q in registered_queues()}
    scheduled = {s.name for s in schedules()}
    yield
    for queue in registered_queues():
        if queue.name not in queues:
            forget_queue(queue.name)
    for schedule in schedules():
        if schedule.name not in scheduled:
            forget_schedule(schedule.name)


def _failure(block: Block, exc: BaseException) -> str:
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == str(README)]
    at = f"README.md:{frames[-1].lineno}" if frames else "its preamble or exercise"
    return f"```python block at {block.where} raised at {at}: {exc!r}"


async def _execute(block: Block) -> None:
    """Run the preamble, the block, then its exercise, in a module namespace of its own."""
    use = _use(block)
    # Registered names are module.qualname: one module name per block.
    ns: Namespace = {"__name__": f"readme_{block.line}"}
    try:
        exec(compile(_preamble(block), f"<preamble of {block.where}>", "exec"), ns)
        result = eval(_compile(block), ns)  # a coroutine when the block awaits at top level
        if inspect.iscoroutine(result):
            await result
        if use.exercise is not None:
            await use.exercise(ns)
    except Exception as exc:
        pytest.fail(_failure(block, exc))


IMPORT = [b for b in ALL if _use(b).mode == "import"]
RUN = [b for b in ALL if _use(b).mode == "run"]


@pytest.mark.parametrize("block", IMPORT, ids=_ids(IMPORT))
@pytest.mark.usefixtures("forget_declarations")
async def test_block_imports(block: Block) -> None:
    assert not _awaits_at_top_level(block), f"{block.where} awaits at top level: run it instead"
    await _execute(block)


@pytest.mark.parametrize("block", RUN, ids=_ids(RUN))
@pytest.mark.usefixtures("forget_declarations", "dbos")
async def test_block_runs(block: Block) -> None:
    await _execute(block)
