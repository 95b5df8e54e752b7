"""The randomized search over fault schedules for mixed groups, on the world of ``simled.py``.

Kept apart from the simulation it drives, as ``simsearch.py`` is from ``simnet.py``:
``python -m simulators.loadsharing_simled --runs N --seed S`` (the documented command) and
``python -m simulators.loadsharing_simledsearch --runs N --seed S`` both run :func:`main`.
"""

from __future__ import annotations

import random
from typing import Any

from simulators.loadsharing_simled import MixedGroup, MixedSpec, calm
from simulators.loadsharing_simsearch import (
    failing_seeds,
    random_network,
    search_main,
    switch_sides,
)

WANTS = (10.0, 16.0, 32.0)


def random_walk(seed: int, *, rho: float = 0.01, **weaken: int | float) -> MixedGroup:
    """One random mixed group under a random fault schedule, healed at the end, then calm.

    Budgets are scarce (a few amps above everyone's failsafe current), so a flaw shows as an
    overload. The caller checks ``violations`` and, after the calm, :func:`converged`.
    ``weaken`` (``led_floor``, ``extra_hold``) overrides the mixed configuration: for checking
    that the search notices a weaker protocol, never for a real run.
    """
    rng = random.Random(seed)
    n, k = rng.randint(2, 4), rng.randint(1, 3)
    timeout = rng.choice((5.0, 12.0))
    spec = MixedSpec(
        n=n, k=k, timeout=timeout, disable_mode=rng.random() < 0.25, rho=rho,
        max_current=rng.choice((16, 32)), supervision=timeout,
        response_time=rng.choice((1.0, 5.0)), member_max=rng.choice((16, 32)),
    )
    spec.group_max = float((n + k) * rng.choice((6, 8, 10, 15)) + rng.choice((0, 3, 20)))
    g = MixedGroup(spec, seed=seed, rates=[rng.uniform(1 - rho, 1 + rho) for _ in range(n)],
                   member_rates=[rng.uniform(1 - rho, 1 + rho) for _ in range(k)],
                   **weaken)  # type: ignore[arg-type]
    for nid in (*g.ids, *g.hosts):
        if rng.random() < 0.8:
            g.plug(nid, want=rng.choice(WANTS))
    for _ in range(rng.randint(5, 20)):
        random_fault(g, rng)
        # often a short while: a demand change right after a fault is where the old and the new
        # allocation meet (a member cut off just before it is told to lower)
        g.run(rng.uniform(0.05, 1.5) * timeout if rng.random() < 0.5 else
              rng.uniform(0.2, 12) * timeout)
    calm(g, 40 * timeout)
    return g


def random_fault(g: MixedGroup, rng: random.Random) -> None:
    """One change of the world: links (gateways and members alike), loss, crashes, plugs."""
    every = [*g.ids, *g.hosts]
    r = rng.random()
    f = g.net.faults
    if r < 0.08:
        g.net.heal()
    elif r < 0.20:
        rng.shuffle(every)
        cut = rng.randint(1, len(every) - 1)
        g.net.partition(every[:cut], every[cut:])
    elif r < 0.32:  # one link, one way or both; a gateway and a member, or two gateways
        a, b = rng.choice(g.ids), rng.choice(every)
        if a != b:
            if rng.random() < 0.5:
                a, b = b, a
            g.net.cut(a, b, both=rng.random() < 0.5)
    elif r < 0.40 and len(g.ids) >= 3:
        switch_sides(g, rng, list(g.ids))
    elif r < 0.48:
        random_network(f, rng)
    elif r < 0.56:
        nid = rng.choice(g.ids)
        if g.alive(nid):
            g.kill(nid)
        else:
            g.start(nid)
    elif r < 0.60:
        g.fw[rng.choice(g.hosts)].reboot()
    elif r < 0.68:
        member_dropout(g, rng)
    else:
        g.plug(rng.choice(every), plugged=rng.random() < 0.6, want=rng.choice(WANTS))


def member_dropout(g: MixedGroup, rng: random.Random) -> None:
    """A member's WiFi drops out for a while, and an EV plugs in elsewhere meanwhile: the
    allocation moves while the member may not hear about it (a frame it never gets)."""
    host = rng.choice(g.hosts)
    g.net.partition([host], list(g.ids))

    def back() -> None:
        for nid in g.ids:
            g.net.heal(host, nid)

    g.sched.after(rng.uniform(0.1, 3) * g.spec.timeout, back)
    idle = [c for c in (*g.ids, *g.hosts) if c != host and not g.charger(c).ev.plugged]
    if idle:
        g.plug(rng.choice(idle), want=rng.choice(WANTS))


def failures(runs: int, seed: int, **weaken: int | float) -> list[tuple[int, Any, str]]:
    """Seeds whose group overloaded the breaker or did not converge after the calm."""
    return failing_seeds(lambda s: random_walk(s, **weaken), runs, seed)


def main(argv: list[str] | None = None) -> int:
    """``python -m simulators.loadsharing_simled --runs N --seed S``: the search, by hand."""
    return search_main(random_walk, argv, main.__doc__ or "")


if __name__ == "__main__":
    raise SystemExit(main())
