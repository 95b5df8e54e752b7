"""jsonl_out rotation, the bridge outbox's full-queue policies and the command window,
without processes."""

from __future__ import annotations

import asyncio
import json
import logging
import pickle
from multiprocessing import Pipe
from pathlib import Path
from typing import Any

import transports
from gateway import channel
from gateway.channel import row
from gateway.commands import CommandWindow
from gateway.config import TransportConfig
from gateway.message import COMMAND, EVENT, Envelope, ValueSpec, command_result
from gateway.outbox import Outbox
from gateway.runner import TransportHost
from gateway.settings import GeneralSettings, TransportSettings
from pytests.helpers import Harness
from transports.base import Transport
from transports.jsonl_out import JsonlOut, JsonlSettings
from transports.system import SystemInput, SystemSettings


def envelope(n: int) -> Envelope:
    return Envelope("src", "reading", {"n": n, "pad": "x" * 100}, sequence=n)


def test_jsonl_rotates_by_size_and_keeps_backups(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    settings = JsonlSettings(transport="jsonl_out", path=str(path), max_bytes=2000,
                             backup_count=2)

    async def main() -> None:
        h = Harness(JsonlOut, settings, "jsonl", tmp_path)
        for n in range(1, 101):
            await h.send(envelope(n))
        await h.stop()

    asyncio.run(main())
    files = [path, Path(f"{path}.1"), Path(f"{path}.2")]
    assert all(f.exists() for f in files) and not Path(f"{path}.3").exists()
    assert all(f.stat().st_size <= 2000 + 300 for f in files)
    newest = [json.loads(line)["sequence"] for line in path.read_text().splitlines()]
    older = [json.loads(line)["sequence"] for line in files[1].read_text().splitlines()]
    assert newest and older and max(older) < min(newest)  # .1 holds what came just before
    assert newest[-1] == 100


def test_outbox_drop_oldest_counts_what_it_drops() -> None:
    # No connection, so no sender thread: nothing leaves and the box fills up.
    outbox = Outbox(None, capacity=100, policy="drop_oldest", log=logging.getLogger("t"))
    for n in range(150):
        assert outbox.put("out", envelope(n))
    assert outbox.dropped == 50
    assert [row[6] for _, row in outbox.items][:3] == [50, 51, 52]  # rows: sequence last


def test_outbox_drop_warnings_are_throttled(caplog: Any) -> None:
    outbox = Outbox(None, capacity=10, policy="drop_oldest", log=logging.getLogger("t"))
    with caplog.at_level(logging.WARNING, logger="t"):
        for n in range(100):
            outbox.put_many([("out", [row(envelope(n * 5 + k)) for k in range(5)])])
    assert outbox.dropped == 490
    drops = [r for r in caplog.records if "dropped" in r.getMessage()]
    assert len(drops) == 1, [r.getMessage() for r in drops]  # the first; a summary in 60 s


def test_urgent_put_passes_a_full_outbox_under_block() -> None:
    outbox = Outbox(None, capacity=2, policy="block", log=logging.getLogger("t"))
    assert outbox.put("out", envelope(1)) and outbox.put("out", envelope(2))
    assert not outbox.put("out", envelope(3))
    assert outbox.put("out", envelope(4), urgent=True)  # a command result never waits
    assert len(outbox.items) == 3 and outbox.dropped == 0


def test_outbox_block_policy_takes_what_fits_and_hands_back_the_rest() -> None:
    outbox = Outbox(None, capacity=7, policy="block", log=logging.getLogger("t"))
    rows = [row(envelope(n)) for n in range(10)]
    left = outbox.put_many([("a", rows[:5]), ("b", rows[5:])])
    assert left == [("b", rows[7:])] and outbox.count == 7
    assert [(t, r[6]) for t, r in outbox.items] == [("a", n) for n in range(5)] + [
        ("b", 5), ("b", 6)]
    assert outbox.put_many(left) == left  # still full: nothing taken, nothing dropped
    assert outbox.dropped == 0


def test_outbox_sends_in_order_by_target_at_most_batch_max_a_frame() -> None:
    """Through a real pipe: frames of at most ``batch_max`` envelopes, one per target, every
    envelope once and in its order."""
    reader, writer = Pipe(duplex=False)
    outbox = Outbox(writer, capacity=1000, policy="block", log=logging.getLogger("t"),
                    batch_max=4)
    rows = [row(envelope(n)) for n in range(10)]
    assert outbox.put_many([("a", rows[:6]), ("b", rows[6:9]), ("a", rows[9:])]) == []
    got: list[tuple[str, list[int]]] = []
    while sum(len(seqs) for _, seqs in got) < 10:
        assert reader.poll(10), got
        frame = reader.recv_bytes()
        target = channel.frame_target(frame)
        body = pickle.loads(frame[frame.index(b"\n") + 1:])
        assert len(body) <= 4
        got.append((target, [r[6] for r in body]))
    outbox.close(5.0)
    assert [s for t, seqs in got if t == "a" for s in seqs] == [0, 1, 2, 3, 4, 5, 9]
    assert [s for t, seqs in got if t == "b" for s in seqs] == [6, 7, 8]
    assert outbox.count == 0 and outbox.sent == 10


def test_command_window_admits_size_then_busy_and_expires_in_order() -> None:
    window = CommandWindow(size=2, timeout=10.0)
    assert window.admit("evse", "a", {"request_id": "a"}, now=0.0)
    assert window.admit("evse", "b", {"request_id": "b"}, now=1.0)
    assert not window.admit("evse", "c", {"request_id": "c"}, now=1.0)  # busy
    assert window.admit("other", "c", {"request_id": "c"}, now=1.0)  # per target
    assert window.answered("evse", "a") and not window.answered("evse", "a")
    assert window.admit("evse", "d", {"request_id": "d"}, now=2.0)  # the slot came back
    assert window.expired(now=10.5) == []
    assert [d["request_id"] for _, d in window.expired(now=11.5)] == ["b", "c"]
    assert window.count("evse") == 1 and window.count("other") == 0


def test_outbox_block_policy_refuses_instead_of_dropping() -> None:
    outbox = Outbox(None, capacity=10, policy="block", log=logging.getLogger("t"))
    results = [outbox.put("out", envelope(n)) for n in range(12)]
    assert results == [True] * 10 + [False, False]
    assert outbox.dropped == 0 and len(outbox.items) == 10


def test_system_reading_has_host_figures(tmp_path: Path) -> None:
    async def main() -> list[Envelope]:
        h = Harness(SystemInput, SystemSettings(transport="system", read_interval=0.05),
                    "system", tmp_path)
        await h.start()
        await asyncio.sleep(0.3)
        await h.stop()
        return h.of_kind("reading")

    readings = asyncio.run(main())
    assert len(readings) >= 2
    data = readings[0].data
    assert data["cpu_count"] >= 1 and 0 <= data["memory_used_percent"] <= 100
    assert 0 <= data["disk_used_percent"] <= 100
    assert readings[0].source_transport_info["device_identifier"].startswith("host-")


class SlowDevice(Transport[TransportSettings]):
    """Takes commands and never finishes one: its queue fills."""

    kind = "test_slow_device"
    Settings = TransportSettings
    accepts = frozenset({COMMAND})

    async def receive(self, envelope: Envelope) -> None:
        await asyncio.Event().wait()

    def describe(self, device: str = "") -> list[tuple[dict[str, str], list[ValueSpec]]]:
        return [({"device_identifier": "slow"}, [ValueSpec("level", writable=True)])]


def _host(monkeypatch: Any, kind: str, cls: type[Transport[Any]], **general: Any
          ) -> tuple[TransportHost, Outbox]:
    monkeypatch.setitem(transports._REGISTRY, kind, cls)  # for this test only
    config = TransportConfig("dev", kind, TransportSettings(transport=kind))
    outbox = Outbox(None, capacity=100, policy="block", log=logging.getLogger("t"))
    return TransportHost(config, GeneralSettings(**general), logging.getLogger("t"),
                         outbox), outbox


def test_receiving_side_answers_busy_when_its_command_queue_is_full(monkeypatch: Any) -> None:
    async def main() -> list[tuple[str, tuple[Any, ...]]]:
        host, outbox = _host(monkeypatch, "test_slow_device", SlowDevice, command_queue=2)
        consume = asyncio.create_task(host._consume())
        worker = asyncio.create_task(host._run_commands())
        commands = [Envelope("mqtt", COMMAND, {"command": "write", "request_id": f"r{i}",
                                               "values": {"level": i}}) for i in range(6)]
        host.inbox.put_nowait((commands, None))
        host.inbox.put_nowait(([Envelope("mqtt", COMMAND, {"command": "describe",
                                                           "request_id": "d"})], None))
        await asyncio.wait_for(host.inbox.join(), 5)  # the inbox never waits on a command
        consume.cancel()
        worker.cancel()
        return list(outbox.items)

    items = asyncio.run(main())
    answers = [(target, r[2]) for target, r in items]
    assert all(target == "mqtt" for target, _ in answers)
    busy = [d["request_id"] for _, d in answers if d.get("result") == "busy"]
    # the batch is admitted in one turn: two wait in the queue, the rest are answered at once
    assert busy == ["r2", "r3", "r4", "r5"]
    described = [d for _, d in answers if d.get("event") == "describe"]
    assert described and described[0]["values"]["level"]["writable"] is True
    assert any(d.get("request_id") == "d" and d.get("ok") for _, d in answers)


class Commander(Transport[TransportSettings]):
    kind = "test_commander"
    Settings = TransportSettings
    accepts = frozenset({EVENT})

    def __init__(self, settings: TransportSettings, ctx: Any) -> None:
        super().__init__(settings, ctx)
        self.results: list[dict[str, Any]] = []

    async def receive_batch(self, envelopes: list[Envelope]) -> None:
        self.results += [e.data for e in envelopes]


def test_sending_side_answers_busy_past_the_window_and_frees_it_on_a_result(
        monkeypatch: Any) -> None:
    async def main() -> tuple[Commander, list[tuple[str, tuple[Any, ...]]]]:
        host, outbox = _host(monkeypatch, "test_commander", Commander, command_window=3)
        consume = asyncio.create_task(host._consume())
        for i in range(5):
            host.ctx.command("evse", {"command": "write", "request_id": f"c{i}"})
        await asyncio.wait_for(host.inbox.join(), 5)
        result = command_result({"command": "write", "request_id": "c0"}, True, "ok")
        host.inbox.put_nowait(([Envelope("evse", EVENT, result)], None))
        await asyncio.wait_for(host.inbox.join(), 5)
        host.ctx.command("evse", {"command": "write", "request_id": "c5"})
        await asyncio.wait_for(host.inbox.join(), 5)
        consume.cancel()
        assert isinstance(host.transport, Commander)
        return host.transport, list(outbox.items)

    transport, sent = asyncio.run(main())
    assert [r[2]["request_id"] for _, r in sent] == ["c0", "c1", "c2", "c5"]
    busy = [d["request_id"] for d in transport.results if d["result"] == "busy"]
    assert busy == ["c3", "c4"]  # answered here, never sent
    assert transport.results[-1]["request_id"] == "c0"  # the real result came through too
