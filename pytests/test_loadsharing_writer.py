"""One writer per grouped charger (issue 17): user writes never raise a charger above its node's
limit, a charger changed behind the node's back is put back, restarts start from the limit.

The property test runs the real Nodes and ChargerWriters in the simulated group (simnet) while
manual writes, charger-side changes, lost writes, demand changes and restarts interleave at
random. Size and seed come from the environment: ``PGW_WRITER_EXAMPLES`` (default 25).
"""

from __future__ import annotations

import logging
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from simulators.loadsharing_simnet import GroupSpec, SimGroup
from transports.charger import ChargerStatus, Pause, Resume, SetLimit, UserRequest
from transports.loadsharing.charger_writer import ChargerWriter, Preference, PreferenceStore

EXAMPLES = int(os.environ.get("PGW_WRITER_EXAMPLES", "25"))


def writer(**kw: object) -> ChargerWriter:
    args: dict[str, object] = {"max_current": 32, "min_current": 6, "grace": 1.0, **kw}
    return ChargerWriter(**args)  # type: ignore[arg-type]


# -- the writer's rules ------------------------------------------------------------------------
def test_a_write_above_the_allocation_applies_the_allocation_and_says_why() -> None:
    w = writer()
    assert w.set_limit(16, 0.0) == [SetLimit(16), Resume()]
    cmds, answer = w.request(UserRequest(amps=32), 1.0)
    assert w.target() == 16 and SetLimit(16) in cmds  # re-said: the charger reports at once
    assert answer["ok"] is True and answer["result"] == "limited" and answer["amps"] == 16
    assert answer["detail"] == "applied 16 A: the group allows 16 A of the 32 A asked"
    # lower than the allocation: taken as asked, and kept when the group allows more
    _, answer = w.request(UserRequest(amps=10), 2.0)
    assert answer["amps"] == 10 and answer["result"] == "ok"
    assert w.set_limit(24, 3.0) == []  # the user's 10 A still holds
    assert w.allocation_max() == 10  # and the member asks the group for no more
    # above the charger's own maximum (the INI's): kept at it
    _, answer = w.request(UserRequest(amps=80), 4.0)
    assert w.preference.max_current == 32 and answer["amps"] == 24
    assert "above this charger's maximum 32 A" in answer["detail"]


def test_pause_resume_and_below_minimum() -> None:
    w = writer()
    w.set_limit(16, 0.0)
    cmds, answer = w.request(UserRequest(charging=False), 1.0)
    assert cmds == [Pause()] and answer["amps"] == 0 and not w.wants_charge
    assert w.set_limit(20, 2.0) == []  # the group's raise doesn't undo the user's pause
    cmds, _ = w.request(UserRequest(charging=True), 3.0)
    assert cmds == [SetLimit(20), Resume()] and w.wants_charge
    _, answer = w.request(UserRequest(amps=3), 4.0)
    assert answer["amps"] == 0 and "below this charger's minimum 6 A" in answer["detail"]
    assert not w.wants_charge


def test_the_watchdog_puts_a_charger_back_and_logs_once(caplog: pytest.LogCaptureFixture) -> None:
    w = writer(log=logging.getLogger("t.writer"))
    w.set_limit(16, 0.0)
    above = ChargerStatus(state="charging", vehicle_connected=True, offered_current=32.0)
    assert w.on_status(above, 0.5) == []  # our write may still be on its way
    caplog.set_level(logging.INFO, "t.writer")
    assert w.on_status(above, 1.5) == [SetLimit(16), Resume()]
    assert w.on_status(above, 3.0) == [SetLimit(16), Resume()]  # said again, not logged again
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "offers 32 A" in warnings[0].getMessage()
    ok = ChargerStatus(state="charging", vehicle_connected=True, offered_current=16.0)
    assert w.on_status(ok, 4.0) == []
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.INFO] == [
        "charger back within this node's limit (16 A)"]
    # paused by the node, resumed at the charger: paused again
    w.set_limit(0, 10.0)
    assert w.on_status(ok, 11.5) == [Pause()]
    # a charger the user paused at its display offers nothing: not over the limit
    w.set_limit(16, 20.0)
    asleep = ChargerStatus(state="paused", vehicle_connected=True, offered_current=32.0)
    assert w.on_status(asleep, 22.0) == []


def test_restart_sends_the_first_limit_whatever_was_sent(tmp_path: object) -> None:
    w = writer()
    w.set_limit(16, 0.0)
    w.restart()  # a role change or a new node
    assert w.set_limit(16, 1.0) == [SetLimit(16), Resume()]


def test_the_preference_survives_a_restart(tmp_path: object) -> None:
    from pathlib import Path

    store = PreferenceStore(Path(str(tmp_path)), logging.getLogger("t"))
    assert store.load() == Preference()
    store.save(Preference(12.0, False))
    assert store.load() == Preference(12.0, False)
    (Path(str(tmp_path)) / "charger_preference.json").write_text('{"max_current": 1e999}')
    assert store.load() == Preference()  # not finite: no preference
    (Path(str(tmp_path)) / "charger_preference.json").write_text("{nope")
    assert store.load() == Preference()


def test_non_finite_requests_are_refused() -> None:
    for bad in (float("inf"), float("nan"), -1, "x", True):
        with pytest.raises(ValueError):
            UserRequest.from_command({"command": "charger_request", "amps": bad})


# -- the property: every interleaving, every charger within its limit after the response time --
Event = tuple[str, int, int, float]
EVENTS = st.lists(
    st.tuples(st.sampled_from(["user", "user_pause", "user_resume", "tamper", "tamper_resume",
                               "plug", "unplug", "restart", "lossy"]),
              st.integers(0, 2), st.integers(0, 48), st.floats(0.5, 25.0)),
    min_size=1, max_size=20)


@settings(max_examples=EXAMPLES, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(events=EVENTS, seed=st.integers(0, 2**16))
def test_no_write_nor_charger_change_outlasts_the_response_time(events: list[Event],
                                                               seed: int) -> None:
    spec = GroupSpec(n=3, group_max=40.0, timeout=5.0, response_time=5.0, supervision=3.0)
    g = SimGroup(spec, seed=seed)
    for nid in g.ids:
        g.plug(nid)
    g.run(60.0)
    window = spec.response_time
    disturbed: dict[str, list[float]] = {nid: [] for nid in g.ids}  # tamper, loss, restart
    samples: list[tuple[float, dict[str, int], dict[str, int | None], float]] = []

    def sample() -> None:
        limits = {nid: (m.node.limit if m.node else None) for nid, m in g.members.items()}
        draw = sum(m.charger.potential_draw() for m in g.members.values())
        samples.append((g.sched.time, g.limits(), limits, draw))
        g.sched.after(0.25, sample)

    history: dict[str, list[tuple[float, int]]] = {nid: [] for nid in g.ids}
    sample()
    for kind, i, amps, wait in events:
        nid = g.ids[i]
        c = g.members[nid].charger
        now = g.sched.time
        if kind == "user":
            g.user_write(nid, amps=float(amps))
        elif kind == "user_pause":
            g.user_write(nid, charging=False)
        elif kind == "user_resume":
            g.user_write(nid, charging=True)
        elif kind in ("tamper", "tamper_resume"):
            c.tamper(amps if kind == "tamper" else max(amps, 6), paused=False)
            disturbed[nid].append(now)
        elif kind == "plug":
            g.plug(nid)
        elif kind == "unplug":
            g.plug(nid, False)
        elif kind == "restart":
            g.kill(nid)
            disturbed[nid].append(now)
            g.run(min(wait, 2.0))  # a crash and the supervisor's restart
            g.start(nid)
        elif kind == "lossy":
            c.lose_writes, c.rng = 0.5, g.rng
        g.run(wait)
        c.lose_writes = 0.0
        disturbed[nid] += c.lost
        c.lost.clear()
    g.run(30.0)
    for nid, m in g.members.items():
        history[nid] = m.limits_sent
    lag = spec.response_time  # the EV follows a lower pilot within it (simnet's ev_lag + write)

    def quiet(nid: str, t: float, span: float) -> bool:
        return not any(t - span <= d <= t for d in disturbed[nid])

    for t, offered, limits, draw in samples:
        for nid in g.ids:
            if limits[nid] is None or not quiet(nid, t, window):
                continue
            allowed = max([a for s, a in history[nid] if t - window <= s <= t]
                          + [a for s, a in history[nid] if s < t - window][-1:] or [0])
            assert offered[nid] <= allowed, (t, nid, offered[nid], allowed, events)
        if all(quiet(nid, t, window + lag) for nid in g.ids):
            assert draw <= g.ceiling + 1e-9, (t, draw, offered, events)
