"""The store-and-forward buffer on its own: order, outages, restarts, the cap, kill -9."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gateway.buffer import (
    BufferSettings,
    DiskQueue,
    Rejected,
    SinkUnavailable,
    StoreAndForward,
)
from gateway.message import Envelope
from pytests.helpers import async_wait_for
from transports.base import Counters

ROOT = Path(__file__).resolve().parent.parent
LOG = logging.getLogger("test_buffer")


def settings(**over: Any) -> BufferSettings:
    base: dict[str, Any] = {"transport": "test", "retry_initial": 0.05, "retry_max": 0.2,
                            "drain_timeout": 5.0}
    base.update(over)
    return BufferSettings(**base)


def env(n: int) -> Envelope:
    return Envelope(source_transport="dev", kind="reading", data={"n": n}, sequence=n,
                    source_transport_info={"device_identifier": "d1"})


class FakeSink:
    """A sink that can be down, reject, or 'crash' after writing but before acknowledging."""

    def __init__(self) -> None:
        self.got: list[int] = []
        self.batches: list[int] = []
        self.down = False
        self.reject_containing: int | None = None
        self.lose_ack_once = False

    async def write(self, batch: Sequence[Envelope]) -> None:
        await asyncio.sleep(0)
        if self.down:
            raise SinkUnavailable("sink is down")
        seqs = [e.sequence for e in batch]
        if self.reject_containing in seqs:
            raise Rejected("bad point")
        self.got += seqs
        self.batches.append(len(seqs))
        if self.lose_ack_once:
            self.lose_ack_once = False
            raise SinkUnavailable("written, but the acknowledgement was lost")


def make(tmp_path: Path, **over: Any) -> tuple[StoreAndForward, Counters]:
    counters = Counters()
    return StoreAndForward(tmp_path / "buf.sqlite3", settings(**over), LOG, counters), counters


async def running(saf: StoreAndForward, sink: FakeSink) -> asyncio.Task[None]:
    saf.open()
    return asyncio.create_task(saf.run(sink))


async def stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


def test_delivers_in_order_in_batches(tmp_path: Path) -> None:
    async def main() -> None:
        saf, counters = make(tmp_path, batch_size=40)
        sink = FakeSink()
        task = await running(saf, sink)
        for n in range(1, 251):
            saf.put(env(n))
            if n % 7 == 0:
                await asyncio.sleep(0)
        await async_wait_for(lambda: len(sink.got) == 250)
        assert sink.got == list(range(1, 251))
        assert max(sink.batches) <= 40
        assert saf.backlog == 0 and counters.extra["delivered"] == 250
        await stop(task)
        await saf.close(sink)

    asyncio.run(main())


def test_outage_loses_nothing_and_keeps_order(tmp_path: Path) -> None:
    async def main() -> None:
        saf, counters = make(tmp_path, batch_size=25)
        sink = FakeSink()
        task = await running(saf, sink)
        for n in range(1, 101):
            saf.put(env(n))
        await async_wait_for(lambda: len(sink.got) == 100)
        sink.down = True
        for n in range(101, 401):
            saf.put(env(n))
            await asyncio.sleep(0)
        await async_wait_for(lambda: counters.errors >= 2)
        assert saf.backlog == 300 and saf.failure.failing
        sink.down = False
        saf.wake()
        await async_wait_for(lambda: len(sink.got) == 400)
        assert sink.got == list(range(1, 401))
        assert not saf.failure.failing
        await stop(task)
        await saf.close(sink)

    asyncio.run(main())


def test_status_says_how_old_the_oldest_waiting_envelope_is(tmp_path: Path) -> None:
    """buffer_oldest_at: when the oldest waiting envelope was read, 0 once all is delivered
    (the status page and /metrics show its age while an output is down)."""
    async def main() -> None:
        saf, counters = make(tmp_path, batch_size=10)
        sink = FakeSink()
        sink.down = True
        task = await running(saf, sink)
        assert counters.extra["buffer_oldest_at"] == 0.0
        for n in range(1, 31):
            e = env(n)
            e.timestamp = 1000.0 + n
            saf.accept([e])
        assert counters.extra["buffer_rows"] == 30
        assert counters.extra["buffer_oldest_at"] == 1001.0
        sink.down = False
        await async_wait_for(lambda: len(sink.got) == 30)
        await async_wait_for(lambda: counters.extra["buffer_oldest_at"] == 0.0)
        assert counters.extra["buffer_rows"] == 0
        await stop(task)
        await saf.close(sink)

    asyncio.run(main())


def test_lost_acknowledgement_means_duplicates_not_loss(tmp_path: Path) -> None:
    async def main() -> None:
        saf, _ = make(tmp_path, batch_size=10)
        sink = FakeSink()
        sink.lose_ack_once = True
        task = await running(saf, sink)
        for n in range(1, 31):
            saf.put(env(n))
        await async_wait_for(lambda: set(sink.got) == set(range(1, 31)) and saf.backlog == 0)
        assert sink.got[:20] == list(range(1, 11)) * 2  # the first batch twice, then the rest
        await stop(task)
        await saf.close(sink)

    asyncio.run(main())


def test_buffer_survives_a_restart(tmp_path: Path) -> None:
    async def main() -> None:
        saf, _ = make(tmp_path)
        sink = FakeSink()
        sink.down = True
        task = await running(saf, sink)
        for n in range(1, 151):
            saf.put(env(n))
        await asyncio.sleep(0.05)
        await stop(task)
        await saf.close(sink, can_deliver=False)
        assert sink.got == []

        again, _ = make(tmp_path)
        again.open()
        assert again.backlog == 150
        sink.down = False
        task = await running(again, sink)
        await async_wait_for(lambda: len(sink.got) == 150)
        assert sink.got == list(range(1, 151))
        await stop(task)
        await again.close(sink)

    asyncio.run(main())


def test_close_drains_what_it_holds(tmp_path: Path) -> None:
    async def main() -> None:
        saf, _ = make(tmp_path, batch_size=50)
        sink = FakeSink()
        saf.open()
        for n in range(1, 301):
            saf.put(env(n))  # not even committed yet: close() must persist and deliver
        await saf.close(sink)
        assert sink.got == list(range(1, 301))
        queue = DiskQueue(tmp_path / "buf.sqlite3")
        queue.open()
        assert queue.count == 0
        queue.close()

    asyncio.run(main())


def test_full_buffer_drops_oldest_counted_and_logged(tmp_path: Path, caplog: Any) -> None:
    async def main() -> None:
        saf, counters = make(tmp_path, buffer_size=50)
        sink = FakeSink()
        sink.down = True
        task = await running(saf, sink)
        with caplog.at_level(logging.WARNING, logger="test_buffer"):
            for n in range(1, 121):
                saf.put(env(n))
                await asyncio.sleep(0)
        assert saf.backlog <= 50 + saf.settings.batch_size
        dropped = counters.extra["buffer_dropped"]
        assert dropped == counters.dropped and dropped == 120 - saf.backlog
        assert any("buffer full" in r.getMessage() for r in caplog.records)
        sink.down = False
        saf.wake()
        await async_wait_for(lambda: saf.backlog == 0)
        assert len(sink.got) + dropped == 120
        assert sink.got == sorted(sink.got) and sink.got[-1] == 120  # newest kept, in order
        await stop(task)
        await saf.close(sink)

    asyncio.run(main())


def test_rejected_batch_is_dropped_and_counted(tmp_path: Path) -> None:
    async def main() -> None:
        saf, counters = make(tmp_path, batch_size=10)
        sink = FakeSink()
        sink.reject_containing = 15
        task = await running(saf, sink)
        for n in range(1, 31):
            saf.put(env(n))
        await async_wait_for(lambda: saf.backlog == 0)
        assert sink.got == list(range(1, 11)) + list(range(21, 31))
        assert counters.extra["buffer_rejected"] == 10 and "bad point" in counters.last_error
        await stop(task)
        await saf.close(sink)

    asyncio.run(main())


def test_group_commit_one_transaction_per_loop_turn(tmp_path: Path) -> None:
    async def main() -> None:
        saf, _ = make(tmp_path, buffer_commit_rows=100)
        saf.open()
        for n in range(1, 1001):
            saf.put(env(n))
        await asyncio.sleep(0)
        assert saf.commits == 10 and saf.queue.count == 1000
        for n in range(1001, 1011):
            saf.put(env(n))
            await asyncio.sleep(0)
        assert saf.commits == 20
        await saf.close(None)

    asyncio.run(main())


def test_accepted_batch_is_on_disk_when_accept_returns(tmp_path: Path) -> None:
    async def main() -> None:
        saf, _ = make(tmp_path, buffer_commit_rows=100)
        saf.open()
        saf.accept([env(n) for n in range(1, 251)])
        assert saf.commits == 3 and saf.queue.count == 250  # no loop turn needed
        await saf.close(None)

    asyncio.run(main())


def test_commit_interval_gathers_rows(tmp_path: Path) -> None:
    async def main() -> None:
        saf, _ = make(tmp_path, buffer_commit_interval=0.2, buffer_commit_rows=1000)
        saf.open()
        for n in range(1, 21):
            saf.put(env(n))
            await asyncio.sleep(0)
        assert saf.commits == 0 and saf.backlog == 20
        await async_wait_for(lambda: saf.commits == 1)
        assert saf.queue.count == 20
        await saf.close(None)

    asyncio.run(main())


_CHILD = textwrap.dedent("""
    import asyncio, logging, sys
    from pathlib import Path
    from gateway.buffer import BufferSettings, StoreAndForward
    from gateway.message import Envelope
    from transports.base import Counters

    async def main():
        saf = StoreAndForward(Path(sys.argv[1]), BufferSettings(transport="t"),
                              logging.getLogger("child"), Counters())
        saf.open()
        n = 0
        while True:
            n += 1
            saf.put(Envelope(source_transport="dev", kind="reading", data={"n": n}, sequence=n))
            await asyncio.sleep(0)  # the commit runs here: from now on n is accepted
            print(n, flush=True)

    asyncio.run(main())
""")


def test_kill_9_keeps_every_accepted_envelope(tmp_path: Path) -> None:
    path = tmp_path / "buf.sqlite3"
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(path)], stdout=subprocess.PIPE, cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert child.stdout is not None
    last = 0
    try:
        while last < 300:
            line = child.stdout.readline()
            assert line, "child died early"
            last = int(line)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    queue = DiskQueue(path)
    queue.open()
    rows = [int(body.split('"n":')[1].split("}")[0]) for _, body in queue.peek(10**6)]
    queue.close()
    assert len(rows) >= last
    assert rows == list(range(1, len(rows) + 1))


def test_unreadable_file_is_moved_aside(tmp_path: Path) -> None:
    path = tmp_path / "buf.sqlite3"
    path.write_bytes(b"this is not a database, just garbage " * 100)
    queue = DiskQueue(path)
    queue.open(LOG)
    queue.append(["{}"])
    assert queue.count == 1
    queue.close()
    assert list(tmp_path.glob("buf.sqlite3.corrupt-*"))


def test_no_attempt_before_the_sink_is_ready(tmp_path: Path, caplog: Any) -> None:
    async def main() -> None:
        saf, counters = make(tmp_path)
        sink = FakeSink()
        ready = asyncio.Event()
        saf.open()
        task = asyncio.create_task(saf.run(sink, ready))
        saf.put(env(1))
        await asyncio.sleep(0.3)
        assert sink.got == [] and counters.errors == 0  # not tried: nothing to log
        ready.set()
        await async_wait_for(lambda: sink.got == [1])
        await stop(task)
        await saf.close(sink)

    with caplog.at_level(logging.WARNING, logger="test_buffer"):
        asyncio.run(main())
    assert not [r for r in caplog.records if "failed" in r.getMessage()]


def test_wake_during_a_failing_attempt_is_not_lost(tmp_path: Path) -> None:
    """The sink says "I am back" while the attempt that will fail is on the wire: the retry
    must come at once, not after the backoff (that wake used to be cleared away)."""

    class BackWhileFailing(FakeSink):
        def __init__(self, saf: StoreAndForward) -> None:
            super().__init__()
            self.saf = saf
            self.down = True

        async def write(self, batch: Sequence[Envelope]) -> None:
            if self.down:
                self.down = False
                self.saf.wake()  # came back while this attempt was failing
                raise SinkUnavailable("was down")
            await super().write(batch)

    async def main() -> float:
        saf, _ = make(tmp_path, retry_initial=5.0, retry_max=5.0)
        sink = BackWhileFailing(saf)
        task = await running(saf, sink)
        started = time.monotonic()
        saf.put(env(1))
        await async_wait_for(lambda: sink.got == [1], timeout=20)
        took = time.monotonic() - started
        await stop(task)
        await saf.close(sink)
        return took

    assert asyncio.run(main()) < 4.0  # the backoff is 5 s
