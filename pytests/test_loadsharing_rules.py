"""The allocation rules' version is part of what nodes agree on (issue 17): during a rolling
upgrade a node running other rules never agrees with the rest, so nobody raises above the
fallback until every member runs the same rules; then the group converges again."""

from __future__ import annotations

from dataclasses import replace

from simulators.loadsharing_simnet import GroupSpec, SimGroup
from transports.loadsharing import allocation as al
from transports.loadsharing.node_config import NodeConfig


class Upgrading(SimGroup):
    """A group whose nodes may run different allocation rules (``rules[node]``)."""

    rules: dict[str, int]

    def config(self, nid: str) -> NodeConfig:
        return replace(super().config(nid), rules=self.rules.get(nid, al.RULES_VERSION))


def group(rules: dict[str, int]) -> Upgrading:
    Upgrading.rules = rules
    g = Upgrading(GroupSpec(n=2, group_max=40.0, timeout=5.0, response_time=2.0), seed=7)
    for nid in g.ids:
        g.plug(nid)
    return g


def test_same_rules_agree() -> None:
    g = group({})
    g.run(120.0)
    assert set(g.modes().values()) == {"agreed"} and g.limits() == {"n1": 20, "n2": 20}


def test_two_nodes_on_different_rules_never_raise_until_both_upgrade() -> None:
    g = group({"n1": al.RULES_VERSION + 1})
    assert g.config("n1").group != g.config("n2").group
    highest = 0
    for _ in range(60):
        g.run(2.0)
        highest = max(highest, *g.limits().values())
        assert "agreed" not in g.modes().values(), g.modes()
    assert highest <= 6 and not g.violations  # the fallback current, never a share
    # n2 is upgraded too (restarted on the new rules): the group agrees again
    g.rules["n2"] = al.RULES_VERSION + 1
    g.kill("n2")
    g.start("n2")
    g.run(150.0)
    assert set(g.modes().values()) == {"agreed"} and g.limits() == {"n1": 20, "n2": 20}
    assert not g.violations
