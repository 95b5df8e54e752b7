"""Masterless load sharing: a group of chargers behind one breaker (docs/loadsharing.md).

- ``allocation``: the equal share with minimums, a pure function;
- ``messages``: the report nodes exchange, JSON;
- ``node``: the protocol state machine (views, leases, acknowledgements, failsafe), sans-I/O;
- ``settings``: the ``loadsharing_*`` keys and their checks;
- ``simnet``: a simulated group (clock, network, chargers) for tests and by hand;
- ``transport``: ``transport = loadsharing``, the node wired to its charger.
"""

from transports.loadsharing.transport import LoadSharing

__all__ = ["LoadSharing"]
