"""The randomized search over fault schedules, run on the simulated group of ``simnet.py``.

Kept apart from the simulation it drives: ``simnet.py`` is the clock, network and chargers (the
world), this is the random schedule of faults thrown at it and the runner that reports failing
seeds. ``python -m simulators.loadsharing_simnet --runs N --seed S`` (the documented command) and
``python -m simulators.loadsharing_simsearch --runs N --seed S`` both run :func:`main`.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from simulators.loadsharing_simnet import Faults, GroupSpec, SimGroup, calm, converged

WANTS = (10.0, 16.0, 32.0)


def random_walk(seed: int, *, rho: float = 0.01) -> SimGroup:
    """One random group under a random fault schedule, healed at the end, run to convergence.

    Scarce budgets (a few amps above everyone's fallback) make every amp count, so a protocol
    flaw shows as an overload. The caller checks ``violations`` (safety) and, after the final
    calm phase, that every node agreed on the equal share (liveness).
    """
    rng = random.Random(seed)
    n = rng.randint(2, 6)
    timeout = rng.choice((5.0, 12.0))
    spec = GroupSpec(
        n=n, timeout=timeout, disable_mode=rng.random() < 0.25, rho=rho,
        max_current=rng.choice((16, 32)), supervision=timeout,
        response_time=rng.choice((1.0, 5.0)),
    )
    spec.group_max = float(n * rng.choice((6, 8, 10, 15)) + rng.choice((0, 3, 20)))
    g = SimGroup(spec, seed=seed, rates=[rng.uniform(1 - rho, 1 + rho) for _ in range(n)])
    ids = list(g.ids)
    for nid in ids:
        if rng.random() < 0.8:
            g.plug(nid, want=rng.choice(WANTS))
    for _ in range(rng.randint(5, 15)):
        _random_fault(g, rng, ids)
        g.run(rng.uniform(0.2, 12) * timeout)
    calm(g, 40 * timeout)
    return g


def _random_fault(g: SimGroup, rng: random.Random, ids: list[str]) -> None:
    r = rng.random()
    f = g.net.faults
    if r < 0.10:
        g.net.heal()
    elif r < 0.22:
        rng.shuffle(ids)
        k = rng.randint(1, len(ids) - 1)
        g.net.partition(ids[:k], ids[k:])
    elif r < 0.32:
        a, b = rng.sample(ids, 2)
        g.net.cut(a, b, both=rng.random() < 0.5)
    elif r < 0.45 and len(ids) >= 3:
        switch_sides(g, rng, ids)
    elif r < 0.53:
        random_network(f, rng)
    elif r < 0.62:
        nid = rng.choice(ids)
        if g.alive(nid):
            g.kill(nid)
        else:
            g.start(nid)
    else:
        g.plug(rng.choice(ids), plugged=rng.random() < 0.6, want=rng.choice(WANTS))


def random_network(f: Faults, rng: random.Random) -> None:
    """A new weather for the network: loss, duplication, long delays (reordering)."""
    f.drop = rng.choice((0.0, 0.1, 0.3, 0.6))
    f.duplicate = rng.choice((0.0, 0.1))
    f.slow = rng.choice((0.0, 0.05, 0.2))
    f.delay_max = rng.choice((0.05, 0.5, 3.0))


def switch_sides(g: SimGroup, rng: random.Random, ids: list[str]) -> None:
    """One node moves from side A to side B of a partition, first losing A one way only, so
    A learns of it a timeout later than the node itself does (the hard case for views)."""
    mover = rng.choice(ids)
    others = [i for i in ids if i != mover]
    rng.shuffle(others)
    k = rng.randint(1, len(others) - 1)
    side_a, side_b = others[:k], others[k:]
    g.net.heal()
    g.net.partition(side_a, side_b)
    for a in side_a:
        g.net.cut(a, mover, both=False)


def failing_seeds(walk: Callable[[int], SimGroup], runs: int,
                  seed: int) -> list[tuple[int, Any, str]]:
    """Seeds whose group overloaded the breaker or did not converge after the calm."""
    out = []
    for s in range(seed, seed + runs):
        g = walk(s)
        problem = converged(g)
        if g.violations or problem:
            out.append((s, g.violations[:2], problem))
    return out


def search_main(walk: Callable[[int], SimGroup], argv: list[str] | None, doc: str) -> int:
    """The command line of a search: ``--runs N --seed S``, failing seeds printed."""
    import argparse
    import time

    parser = argparse.ArgumentParser(description=doc)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    started = time.monotonic()
    bad = failing_seeds(walk, args.runs, args.seed)
    for s, violations, problem in bad:
        print(f"seed {s}: violations {violations} {problem}")
    took = time.monotonic() - started
    print(f"{args.runs} runs from seed {args.seed}: {len(bad)} failed, {took:.1f} s")
    return 1 if bad else 0


def main(argv: list[str] | None = None) -> int:
    """``python -m simulators.loadsharing_simnet --runs N --seed S``: the search, by hand."""
    return search_main(random_walk, argv, main.__doc__ or "")


if __name__ == "__main__":
    raise SystemExit(main())
