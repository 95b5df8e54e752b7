"""RepeatLog (one line and a count for repeated warnings) and Coalescer (one slot per kind of
device event, released at most once per interval): the two tools every input path uses."""

from __future__ import annotations

import asyncio
import logging

import pytest

from gateway.backoff import RepeatLog
from gateway.coalesce import Coalescer
from pytests.helpers import async_wait_for


def test_repeats_are_one_line_and_a_summary(caplog: pytest.LogCaptureFixture) -> None:
    log = logging.getLogger("flood_test")
    repeats = RepeatLog(log, window=60)
    with caplog.at_level(logging.DEBUG, "flood_test"):
        assert repeats.warn("a", "bad thing %d", 1) is True
        for i in range(199):
            assert repeats.warn("a", "bad thing %d", i + 2) is False
        assert repeats.warn("b", "other thing") is True
        assert repeats.pending("a") == 199
        repeats.flush()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings[0] == "bad thing 1" and warnings[1] == "other thing"
    assert any("bad thing 1 (and 199 more like it" in w for w in warnings)
    assert len(warnings) == 3  # "b" had no repeats: no summary
    assert repeats.total == 201


def test_the_summary_comes_when_the_window_closes(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        repeats = RepeatLog(logging.getLogger("flood_test"), window=0.2)
        for _ in range(5):
            repeats.warn("k", "refused")
        await async_wait_for(lambda: any("4 more" in r.getMessage() for r in caplog.records), 5)
        assert repeats.warn("k", "refused") is True  # a new window: logged again

    with caplog.at_level(logging.WARNING, "flood_test"):
        asyncio.run(main())


def test_keys_are_bounded() -> None:
    repeats = RepeatLog(logging.getLogger("flood_test"), max_keys=4)
    for i in range(100):
        repeats.warn(f"k{i}", "x")
    assert repeats.open_windows <= 4


def test_coalescer_keeps_the_last_value_and_counts() -> None:
    async def main() -> None:
        events = Coalescer(min_interval=0.3)
        for i in range(1000):
            events.offer("reading", {"amps": i}, dedupe=True)
            events.offer("boot", {"n": i})
        key, value, offers = await events.take()
        assert (key, value, offers) == ("reading", {"amps": 999}, 1000)
        key, value, offers = await events.take()
        assert (key, value, offers) == ("boot", {"n": 999}, 1000)
        assert events.coalesced == 1998
        events.offer("reading", {"amps": 999}, dedupe=True)  # unchanged: dropped
        assert events.unchanged == 1 and not events.pending("reading")
        events.offer("reading", {"amps": 5}, dedupe=True)
        loop = asyncio.get_running_loop()
        started = loop.time()
        key, value, _ = await events.take()  # waits out the interval since the last release
        assert value == {"amps": 5} and loop.time() - started >= 0.2

    asyncio.run(main())
