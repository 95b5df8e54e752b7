"""The network keys of a ``loadsharing`` section (part 2): HTTP port, discovery, group secret.

A mixin so that ``settings.py`` keeps OpenEVSE's keys and the protocol's, and this file the
network's. With ``node_listen`` set the node speaks HTTP/WebSocket to its peers (OpenEVSE's
wire, docs/loadsharing_network.md) and its members come from the REST API; the part-1 UDP keys
(``listen``, ``peers``) must then stay empty.
"""

from __future__ import annotations

from pydantic import Field, field_validator

from gateway.settings import Secret, Settings, StrList


def _host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected host:port with a port 1..65535, got {text!r}")
    return host, int(port)


class NetworkKeys(Settings):
    node_listen: str = Field(
        default="",
        description="host:port of the node's HTTP API and /ws (OpenEVSE's wire); the port is "
        "offset by instance*100; empty: the part-1 UDP link (listen/peers)",
    )
    node_host: str = Field(
        default="",
        description="how peers reach this node (its member id); default: the listen address, "
        "with the offset port",
    )
    loadsharing_group_secret: Secret | None = Field(
        default=None,
        description="optional: sign peer messages and config pushes (HMAC + timestamp) and "
        "require a token for REST writes; every member needs the same secret",
    )
    loadsharing_api_token: Secret | None = Field(
        default=None,
        description="the bearer token people use for REST writes (POST, DELETE)",
    )
    loadsharing_api_open: bool = Field(
        default=False,
        description="true: REST writes need no token or signature (OpenEVSE's LAN trust, what a "
        "real OpenEVSE controller or member needs); false (default): writes need the api token "
        "or the group signature, and are refused (401) when neither is set",
    )
    loadsharing_auth_window: float = Field(
        default=120.0, ge=5.0, le=3600.0,
        description="seconds a signed message stays valid (clocks must agree this well)",
    )
    discovery: bool = Field(default=True, description="advertise and browse _openevse._tcp")
    discovery_interfaces: StrList = Field(
        default=(), description="addresses zeroconf uses (default: all)"
    )
    mdns_name: str = Field(
        default="", description="mDNS host name; default: per instance, from the host name"
    )
    openevse_members: StrList = Field(
        default=(),
        description="OpenEVSE chargers (host:port of their WiFi module) this group leads: a mixed "
        "group; the same list on every gateway node (docs/loadsharing_openevse.md)",
    )

    @field_validator("node_listen")
    @classmethod
    def _node_listen(cls, value: str) -> str:
        if value:
            _host_port(value)
        return value

    @field_validator("openevse_members")
    @classmethod
    def _openevse_members(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for host in value:
            _host_port(host)
        if len(set(value)) != len(value):
            raise ValueError(f"an OpenEVSE member is listed twice: {', '.join(value)}")
        return value
