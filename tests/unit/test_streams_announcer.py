"""The stream announcer: at most one inline NOTIFY per window per workflow."""

from __future__ import annotations

import time

import pytest

from dbos_async import streams


def test_a_busy_stream_announces_once_per_window(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [100.0]
    monkeypatch.setattr(time, "monotonic", lambda: now[0])
    announcer = streams.Announcer()
    assert announcer.announce_now("w1")
    assert not announcer.announce_now("w1")  # inside the window
    assert announcer.announce_now("w2")  # windows are per workflow
    now[0] += 2 * streams.ANNOUNCE_WINDOW
    assert announcer.announce_now("w1")
