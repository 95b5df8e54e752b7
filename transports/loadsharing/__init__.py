"""Masterless load sharing: a group of chargers behind one breaker (docs/loadsharing.md).

The map, by who owns what (docs/architecture.md, "Load sharing"):

The protocol, pure (no I/O, the clock passed in):
- ``allocation``: the equal share with minimums, and ``RULES_VERSION`` (agreed like the config);
- ``messages``: the report nodes exchange (JSON) and the group hash;
- ``node_config``: a node's configuration and the timings derived from its bounds;
- ``node``: the state machine (views, leases, acknowledgements, failsafe);
- ``led``: the OpenEVSE members a mixed group leads (who leads, how they count, their targets);
- ``demand``: whether the local EV wants charge, from the charger's status;
- ``charger_writer``: the one writer of the charger (node limit + user preference, watchdog);
- ``openevse_plan``: the OpenEVSE controller role's members and its allocation.

Configuration:
- ``group_keys``: the group keys once (names, defaults, OpenEVSE's messages, the wire form):
  the INI checks, REST validation, config sync, a member's stored keys and a controller's push
  body all derive from :class:`~transports.loadsharing.group_keys.GroupKeys`;
- ``settings``: the ``loadsharing`` section, OpenEVSE's keys and ours, the INI ceiling, the
  ``charger`` reference (checked by gateway/references.py);
- ``net_settings``: the network keys (HTTP port, discovery, secret, token, open mode);
- ``config_sync``: the synced group configuration (version, hash, who adopts whose).

On the network (OpenEVSE's wire):
- ``http_api``: the REST routes and ``/ws`` (HTTP only); ``rest``: what the routes decide;
- ``auth``: who may write (token, group signature, open mode); ``peer_client``: one member's
  status and reports pulled over ``/ws``; ``discovery``: mDNS; ``members``: the persisted list;
- ``network``: the masterless node on the network (peers, pushes, status);
- ``openevse_member`` / ``openevse_controller``: the gateway as an OpenEVSE member or controller;
- ``mixed``: a mixed group's OpenEVSE members led by this node while it is acting controller.

The transport (``transport = loadsharing``):
- ``transport``: the section's life: the bridge's messages, the UDP link, and the role it
  builds (collaborators passed in) and runs;
- ``charger_driver``: the section's charger, driven (status in, the one writer's commands out,
  supervision pulsed, user requests), handed to every role;
- ``masterless_udp``: ``MasterlessOnUdp``, the masterless node on part 1's UDP link;
- ``networked``: ``MasterlessOnHttp``, the masterless node with ``node_listen``;
- ``openevse_roles``: ``OpenEvseMemberRole`` and ``OpenEvseControllerRole``, the roles in an
  OpenEVSE group; ``runtime_role``: a role taken at run time.

Not here: the simulated groups and their randomized searches live beside the other simulators
(``simulators/loadsharing_simnet.py``, ``_simsearch``, ``_simled``, ``_simledsearch``); they
drive these same objects on a simulated clock and network. No module of this package imports
another's private names, and the package has no import cycle
(``pytests/test_loadsharing_imports.py``). Nothing is imported here: ``settings.py``
validates a section without aiohttp, zeroconf or websockets, and ``transport.py`` registers
the kind (transports/__init__.py ``KINDS``).
"""
