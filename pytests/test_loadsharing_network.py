"""Load-sharing groups of real gateways on loopback (each with its own RAPI simulator).

Three gateways form a group through the REST API, share, survive a kill -9 and a restart, sync
a config change, resolve conflicting changes, lose a node to a cut link (a proxy between the
group and that node: it stands for a network partition), drop a member; then eight share. The
chargers' limits are read from the simulators (``current_capacity``), never from the gateways.
Ports are free ports; every wait polls a condition with a generous deadline.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from pytests.helpers import wait_for
from pytests.loadsharing_sites import (
    CutProxy,
    Site,
    cleanup,
    form_group,
    http,
    try_http,
    wait_capacities,
)

pytestmark = pytest.mark.timeout(240)


def _consistent(sites: list[Site]) -> str | None:
    seen = set()
    for s in sites:
        st = try_http("GET", f"{s.url}/loadsharing/status")
        if st is None or st[0] != 200 or not st[1]["config_consistent"]:
            return None
        seen.add(st[1]["config_hash"])
    return seen.pop() if len(seen) == 1 else None


def _agreed(sites: list[Site], online: int) -> bool:
    for s in sites:
        st = try_http("GET", f"{s.url}/loadsharing/status")
        if st is None or st[1]["mode"] != "agreed" or st[1]["online_count"] != online:
            return False
    return True


def _config(site: Site) -> dict:
    return http("GET", f"{site.url}/config")[1]


def test_three_gateways(tmp_path: Path) -> None:
    # node 2 is reached through a proxy, so that it can be cut off from the group
    sites = [Site(tmp_path / f"n{i}", group_max=30) for i in range(3)]
    proxy = CutProxy(sites[2].node_port)
    sites[2].member = f"127.0.0.1:{proxy.port}"
    try:
        for s in sites:
            s.start()
        for s in sites:
            s.wait_up()
        # alone, each node may give its EV the whole breaker (the EVs all ask for 32 A)
        wait_capacities(sites, [30, 30, 30])
        form_group(sites)
        code, body = http("POST", f"{sites[0].url}/loadsharing/peers", {"host": sites[1].member})
        assert (code, body) == (200, {"msg": "already in group"})
        wait_capacities(sites, [10, 10, 10])
        peers = http("GET", f"{sites[1].url}/loadsharing/peers")[1]
        assert sorted(p["host"] for p in peers) == sorted(s.member for s in sites)
        assert [p["isLocal"] for p in peers].count(True) == 1
        status = sites[1].ls()
        assert status["online_count"] == 3 and not status["failsafe_active"]
        assert {a["target_current"] for a in status["allocations"]} == {10}

        # a config change on one node reaches every node: 24 A -> 8 A each
        code, _ = http("POST", f"{sites[1].url}/config", {"loadsharing_group_max_current": 24})
        assert code == 200
        wait_capacities(sites, [8, 8, 8])
        assert {_config(s)["loadsharing_group_max_current"] for s in sites} == {24.0}
        # a bad value is refused with OpenEVSE's words and changes nothing
        assert http("POST", f"{sites[0].url}/config",
                    {"loadsharing_safety_factor": 1.5}) == \
            (400, {"msg": "loadsharing_safety_factor must be between 0.0 and 1.0"})

        # conflicting changes at once on two nodes: one wins everywhere, by updated_at then id
        bodies = [(sites[0], {"loadsharing_group_max_current": 27}),
                  (sites[2], {"loadsharing_group_max_current": 30})]
        threads = [threading.Thread(target=http, args=("POST", f"{s.url}/config", b))
                   for s, b in bodies]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wait_for(lambda: _consistent(sites), 30, 0.2)
        winner = _config(sites[1])["loadsharing_group_max_current"]
        assert winner in (27.0, 30.0)
        assert {_config(s)["loadsharing_group_max_current"] for s in sites} == {winner}
        share = int(winner) // 3
        wait_capacities(sites, [share] * 3)

        # kill -9 one gateway: the others reserve 6 A for it and share the rest
        sites[1].kill_gateway()
        rest = (int(winner) - 6) // 2
        wait_capacities([sites[0], sites[2]], [rest, rest])
        # restarted, it rejoins from its persisted member list
        sites[1].start_gateway()
        sites[1].wait_up()
        wait_for(lambda: _agreed(sites, 3), 60, 0.2)
        wait_capacities(sites, [share] * 3)

        # cut node 2 off: it falls to the safe current, the majority reserves 6 A for it
        proxy.cut()
        wait_capacities(sites, [rest, rest, 6])
        assert sites[2].ls()["failsafe_active"]
        proxy.heal()
        wait_capacities(sites, [share] * 3)

        # remove node 2: it goes on alone with the group's values, the two share
        code, body = http("DELETE", f"{sites[0].url}/loadsharing/peers/{sites[2].member}")
        assert (code, body) == (200, {"msg": "done"})
        half = int(winner) // 2
        wait_capacities(sites, [half, half, int(winner)])
        assert http("DELETE", f"{sites[0].url}/loadsharing/peers/{sites[2].member}") == \
            (404, {"msg": "Peer not found"})
    finally:
        cleanup(sites)
        proxy.close()


def test_eight_gateways(tmp_path: Path) -> None:
    sites = [Site(tmp_path / f"n{i}", group_max=64) for i in range(8)]
    try:
        for s in sites:
            s.start()
        for s in sites:
            s.wait_up()
        form_group(sites)
        wait_capacities(sites, [8] * 8, timeout=60)
        # one EV leaves: the seven others share 64 A (9 A each, whole amps)
        sites[3].sim_post("unplug")
        wait_capacities(sites[:3] + sites[4:], [9] * 7, timeout=30)
    finally:
        cleanup(sites)


DISCOVERY_SCRIPT = r'''
import asyncio, json, logging, sys, time
sys.path.insert(0, sys.argv[1])
from transports.loadsharing.discovery import Discovery

async def main():
    log = logging.getLogger("d")
    kw = dict(interfaces=["127.0.0.1"], interval=0.5, ttl=3.0)
    a = Discovery("pgw-a", 8190, "AAAA01", "0.8", log, **kw)
    b = Discovery("pgw-b", 8290, "bbbb02", "0.8", log, **kw)
    await a.start(); await b.start()
    out = {}
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not (a.found() and b.found()):
        a.refresh_soon(); b.refresh_soon()
        await asyncio.sleep(0.2)
    out["a"] = [(f.hostname, f.host, f.id, f.type, f.version) for f in a.found()]
    out["b"] = [(f.hostname, f.host, f.id) for f in b.found()]
    await b.stop()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and a.found():
        await asyncio.sleep(0.2)
    out["a_after_b_left"] = [f.hostname for f in a.found()]
    await a.stop()
    print(json.dumps(out))

asyncio.run(main())
'''


def test_discovery_in_a_network_namespace(tmp_path: Path) -> None:
    """mDNS needs multicast on loopback, which the host's ``lo`` may lack: a namespace has it."""
    import os
    import shutil
    import subprocess
    import sys

    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("needs root and iproute2 for a network namespace")
    ns = f"pgw_ls_{os.getpid()}"
    if subprocess.run(["ip", "netns", "add", ns], capture_output=True).returncode != 0:
        pytest.skip("network namespaces are not available here")
    try:
        for cmd in ("ip link set lo up", "ip link set lo multicast on",
                    "ip route add 224.0.0.0/4 dev lo"):
            subprocess.run(["ip", "netns", "exec", ns, *cmd.split()], check=True)
        script = tmp_path / "discover.py"
        script.write_text(DISCOVERY_SCRIPT)
        root = str(Path(__file__).resolve().parent.parent)
        done = subprocess.run(["ip", "netns", "exec", ns, sys.executable, str(script), root],
                              capture_output=True, text=True, timeout=90)
        assert done.returncode == 0, done.stderr
        out = json.loads(done.stdout.strip().splitlines()[-1])
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
    # each finds the other (TXT id lower-case, type, version), never itself
    assert out["a"] == [["pgw-b.local", "127.0.0.1:8290", "bbbb02", "protocol_gateway", "0.8"]]
    assert out["b"] == [["pgw-a.local", "127.0.0.1:8190", "aaaa01"]]
    # b gone: its entry expires with the TTL
    assert out["a_after_b_left"] == []
