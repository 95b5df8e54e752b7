"""The ``loadsharing`` section: OpenEVSE's ``loadsharing_*`` keys, ours, and their checks.

The group keys keep OpenEVSE's names, defaults and error messages (its ``/config`` answers 400
with exactly these words, and so does our REST API): ``group_keys.py`` holds them once.
Keys OpenEVSE has no use for in a masterless group (``loadsharing_role``, ...) are accepted so a
configuration copied from a device loads, and documented as ignored.

Cross-key rules that make the safety argument of docs/loadsharing.md hold are checked here,
once, at load: the reserve for an offline peer is at least what that peer falls back to, and the
whole group in failsafe fits under the breaker.
"""

from __future__ import annotations

import socket
from typing import Any, Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from gateway.instance import offset_address
from gateway.references import Reference
from gateway.settings import StrList, TransportSettings
from transports.charger import CHARGER
from transports.loadsharing import group_keys as gk
from transports.loadsharing.group_keys import MSG_ASSUMED_UNDER_SAFE, MSG_MODE, MSG_SAFE_OVER_MAX
from transports.loadsharing.net_settings import NetworkKeys

FailsafeMode = Literal["safe_current", "disable"]

#: OpenEVSE's own wording (LOADSHARING.md): our node and the OpenEVSE simulator both answer with it.
MSG_READ_ONLY = "Load sharing configuration is read-only on members"
#: the group keys' checks live with their model; the INI and REST share them
check_keys = gk.check


def parse_address(text: str) -> tuple[str, int]:
    """``host:port`` -> (host, port); raises ValueError with the offending text."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected host:port with a port 1..65535, got {text!r}")
    return host, int(port)


_WILDCARD = ("", "0.0.0.0", "::")


def node_address(node_listen: str, node_host: str, instance: int) -> tuple[str, int, str]:
    """(bind host, port with the instance offset, how peers reach us: ``node_host`` or the
    listening address, a wildcard shown as this host's name)."""
    host, port = parse_address(offset_address(node_listen, instance))
    shown = socket.gethostname() if host in _WILDCARD else host
    return host, port, node_host or f"{shown}:{port}"


class LoadSharingSettings(NetworkKeys, TransportSettings):
    """Everything a node needs; group keys must be equal on every member (docs/loadsharing.md)."""

    model_config = ConfigDict(allow_inf_nan=False)  # inf/nan/1e309 is no current

    loadsharing_enabled: bool = Field(
        default=False, description="false: the node takes part in nothing and commands nothing"
    )
    loadsharing_group_id: str = Field(default="", description="user-chosen group name")
    loadsharing_group_max_current: float = Field(
        default=0.0, description="amps the breaker allows for the whole group (0: none)"
    )
    loadsharing_safety_factor: float = Field(default=1.0, description="0..1 derating")
    loadsharing_heartbeat_timeout: float = Field(
        default=30.0, description="seconds without a message before a peer is offline; 5..600"
    )
    loadsharing_failsafe_mode: FailsafeMode = Field(
        default="safe_current", description="safe_current or disable (stop charging)"
    )
    loadsharing_failsafe_safe_current: float = Field(
        default=6.0, description="amps in safe_current mode; 0..80 and <= group max"
    )
    loadsharing_failsafe_peer_assumed_current: float = Field(
        default=6.0, description="amps reserved for each offline member; 0..80, >= safe current"
    )
    loadsharing_priority: int = Field(default=0, description="lower wins under scarcity")
    loadsharing_rotation_interval: int = Field(
        default=1800, ge=0, description="OpenEVSE's winner rotation; accepted, not used yet"
    )
    loadsharing_role: Literal["", "controller", "member"] = Field(
        default="", description="OpenEVSE's role: with node_listen, 'member' (an OpenEVSE "
        "controller leads this node) or 'controller' (this node leads OpenEVSE members); "
        "'' = the masterless protocol (docs/loadsharing_openevse.md)"
    )
    loadsharing_controller_host: str = Field(
        default="", description="OpenEVSE's controller host; ignored by a masterless node"
    )
    # -- this project's keys ------------------------------------------------------------------
    loadsharing_min_current: int = Field(
        default=6, ge=0, le=80, description="the local charger's minimum current (A)"
    )
    loadsharing_max_current: int = Field(
        default=32, ge=1, le=80, description="the local charger's maximum current (A)"
    )
    loadsharing_response_time: float = Field(
        default=5.0,
        ge=0.1,
        le=60.0,
        description="seconds for the charger to lower its draw after a lower limit is sent "
        "(the charger's write plus the EV's reaction; J1772 allows the EV 5 s)",
    )
    loadsharing_clock_tolerance: float = Field(
        default=0.01, ge=0.0, le=0.1, description="bound on any node's clock rate error (0.01 = 1%)"
    )
    loadsharing_heartbeat_interval: float = Field(
        default=0.0, ge=0.0, description="seconds between reports; 0 = timeout / 6"
    )
    # -- the transport's own keys ---------------------------------------------------------------
    charger: str = Field(min_length=1, description="the local charger's section: a Charger "
                         "(rapi_serial) that bridges back; this node is its one writer")
    charger_heartbeat: int = Field(
        default=30, ge=0, le=65535,
        description="the charger's supervision interval (s) the node pulses (RAPI $SY); 0 = off",
    )
    node_id: str = Field(default="", description="this node's id; default: its listen address")
    listen: str = Field(
        default="",
        description="host:port of the UDP peer link, a base port (+ instance*100); empty: alone",
    )
    peers: StrList = Field(
        default=(),
        description="the members' host:port, comma separated (this node's own address, after "
        "the instance offset, may be listed: it is skipped)",
    )

    @field_validator(*gk.RANGES)
    @classmethod
    def _openevse_ranges(cls, value: float, info: Any) -> float:
        return gk.check_number(str(info.field_name), float(value))

    @field_validator("loadsharing_failsafe_mode", mode="before")
    @classmethod
    def _mode(cls, value: Any) -> Any:
        if value not in ("safe_current", "disable"):
            raise ValueError(MSG_MODE)
        return value

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        if value:
            parse_address(value)
        return value

    @field_validator("peers")
    @classmethod
    def _peers(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for peer in value:
            parse_address(peer)
        if len(set(value)) != len(value):
            raise ValueError(f"a peer is listed twice: {', '.join(value)}")
        return value

    @model_validator(mode="after")
    def _cross(self) -> LoadSharingSettings:
        safe = self.loadsharing_failsafe_safe_current
        group = self.loadsharing_group_max_current
        if group > 0 and safe > group:
            raise ValueError(MSG_SAFE_OVER_MAX)
        if self.loadsharing_failsafe_peer_assumed_current < safe:
            raise ValueError(MSG_ASSUMED_UNDER_SAFE)
        if self.loadsharing_min_current > self.loadsharing_max_current:
            raise ValueError("loadsharing_min_current must not exceed loadsharing_max_current")
        if self.node_listen and (self.listen or self.peers):
            raise ValueError("node_listen (the HTTP/WebSocket peer link) and listen/peers (the "
                             "UDP link) exclude each other: members of an HTTP node are added "
                             "over its REST API")
        if self.openevse_members and (not self.node_listen or self.loadsharing_role):
            raise ValueError("openevse_members (a mixed group) needs node_listen and the "
                             "masterless protocol (loadsharing_role empty): OpenEVSE members "
                             "speak HTTP, and their controller is chosen by the group")
        if self.peers and not self.listen:
            raise ValueError("peers need listen = host:port for the peer link")
        if self.peers and self.node_id and self.node_id != self.listen:
            raise ValueError("with peers, a member's id is its listen address: leave node_id empty")
        ceiling = group * self.loadsharing_safety_factor
        fallback = safe if self.loadsharing_failsafe_mode == "safe_current" else 0.0
        members = self.member_count + len(self.openevse_members)
        member_of_openevse = bool(self.node_listen) and self.loadsharing_role == "member"
        if self.loadsharing_enabled and members * fallback > ceiling and not member_of_openevse:
            raise ValueError(
                f"{members} members at loadsharing_failsafe_safe_current {safe:g} A draw "
                f"{members * fallback:g} A in failsafe, over the group's "
                f"{ceiling:g} A (group max x safety factor): lower the safe current"
            )
        return self

    @property
    def member_id(self) -> str:
        return self.node_id or self.listen or "local"

    @property
    def member_count(self) -> int:
        """``peers`` may list this node's own address too (one file for every member)."""
        return len({*self.peers, self.member_id})

    @property
    def fallback_current(self) -> float:
        """What this node falls back to on its own: safe current, or 0 in disable mode."""
        if self.loadsharing_failsafe_mode == "disable":
            return 0.0
        return self.loadsharing_failsafe_safe_current

    def above_ceiling(self, values: dict[str, Any]) -> str | None:
        """Why network-given group values would raise what the INI allows, or None.

        The INI is the ceiling (docs/loadsharing.md): a push, a config sync or a controller
        may lower the group maximum and the safety factor, never raise them above the file's.
        """
        for key in ("loadsharing_group_max_current", "loadsharing_safety_factor"):
            if key not in values:
                continue
            try:
                value = float(values[key])
            except (TypeError, ValueError):
                continue  # check_keys says what is wrong with it
            ini = float(getattr(self, key))
            if value > ini:
                return (f"{key} {value:g} is above this node's configuration file ({ini:g}): "
                        "the INI is the ceiling; a write may only lower it")
        return None

    def bounded(self, values: dict[str, Any]) -> dict[str, Any]:
        """Synced group values within the INI's bounds: group maximum and safety factor no
        higher, the reserve for an offline peer no lower."""
        out = dict(values)
        for key in ("loadsharing_group_max_current", "loadsharing_safety_factor"):
            out[key] = min(float(out[key]), float(getattr(self, key)))
        key = "loadsharing_failsafe_peer_assumed_current"
        out[key] = max(float(out[key]), float(getattr(self, key)))
        return out

    def references(self) -> list[Reference]:
        """``charger`` names a Charger section that bridges back; while load sharing is on,
        this section is its one writer (``charger_owner``, gateway/references.py)."""
        return [Reference("charger", self.charger, CHARGER,
                          owner_key="charger_owner" if self.loadsharing_enabled else "")]

    def advise_on(self, ref: Reference, charger: Any) -> list[str]:
        """Warnings about the charger this section names (gateway/references.py)."""
        every = float(getattr(charger, "read_interval", 0.0) or 0.0)
        if ref.key == "charger" and every > self.loadsharing_response_time:
            return [f"[{ref.section}] read_interval {every:g} s is longer than "
                    f"loadsharing_response_time {self.loadsharing_response_time:g} s: a current "
                    "changed at the charger itself is seen, and put back, only at its next "
                    "reading"]
        return []

    def advice(self) -> list[tuple[str, str]]:
        """(key, warning) for ``check``: valid, but probably not what was meant."""
        out = []
        secret, token = self.loadsharing_group_secret, self.loadsharing_api_token
        if self.loadsharing_api_open:
            if secret or token:
                out.append(("loadsharing_api_open", "open mode: the api token and the group "
                            "secret are not asked for on writes"))
        elif token and not secret and self.node_listen:
            out.append(("loadsharing_api_token", "a token without loadsharing_group_secret: "
                        "people can write, but peers' config pushes and member adds are "
                        "refused; set the same secret on every member (or "
                        "loadsharing_api_open = true on a trusted LAN)"))
        elif not token and not secret and self.node_listen and self.loadsharing_enabled:
            out.append(("node_listen", "writes to this node's API are refused (no "
                        "loadsharing_api_token or loadsharing_group_secret): members can't be "
                        "added; set one, or loadsharing_api_open = true for OpenEVSE peers"))
        return out

    def claims(self) -> list[tuple[str, str]]:
        claims = [("udp listen", self.listen)] if self.listen else []
        if self.node_listen:
            claims.append(("tcp listen", self.node_listen))
        return claims
