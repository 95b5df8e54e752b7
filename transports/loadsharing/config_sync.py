"""Group configuration consistency: version, hash and updated_at, and who adopts whose.

OpenEVSE declares ``loadsharing_config_version``/``_updated_at`` and never sets them; here they
work. The group keys (``SYNCED``) and the member list are one :class:`GroupConfig`:

- a local change (REST ``POST /config``, a member added or removed, the INI edited between two
  starts) bumps ``version``, stamps ``updated_at`` (unix time) and is pushed to online peers
  (``POST /config`` with the version fields) with retries;
- a node seeing a peer with a higher version fetches that peer's ``/config`` and adopts it;
- equal versions with different hashes: the later ``updated_at`` wins, then the lower device id;
- a config that no longer lists this node means it was removed: it goes on alone.

While hashes differ the node never reaches agreement with the disagreeing peer (the group hash
is part of every report, docs/loadsharing.md), so it holds and then falls to its safe current:
more conservative than the smallest group maximum, until sync has made them equal.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from transports.loadsharing import group_keys as gk
from transports.loadsharing.members import read_json, write_atomic

FILE_NAME = "loadsharing_config.json"
SYNCED = gk.KEYS  # the group keys (group_keys.GroupKeys), in order
VERSION = "loadsharing_config_version"
UPDATED_AT = "loadsharing_config_updated_at"
HASH = "loadsharing_config_hash"
MEMBERS = "loadsharing_members"
DEVICE = "loadsharing_device_id"


def normalise(values: dict[str, Any]) -> dict[str, Any]:
    """Typed values of the synced keys (numbers as floats), so hashes agree across nodes."""
    out: dict[str, Any] = {}
    for key in SYNCED:
        v = values[key]
        out[key] = str(v) if key in ("loadsharing_group_id", "loadsharing_failsafe_mode") \
            else float(v)
    return out


def config_hash(values: dict[str, Any], members: tuple[str, ...]) -> str:
    """Deterministic: sorted keys, fixed separators, sorted members, numbers rounded."""
    canon = {k: (round(v, 6) if isinstance(v, float) else v) for k, v in normalise(values).items()}
    text = json.dumps([canon, sorted(members)], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def check_group(values: dict[str, Any], members: int) -> str | None:
    """OpenEVSE's message for a bad value, or ours when the failsafe would overload the breaker."""
    msg = gk.check(values)
    if msg is not None:
        return msg
    v = normalise(values)
    fallback = 0.0 if v["loadsharing_failsafe_mode"] == "disable" \
        else v["loadsharing_failsafe_safe_current"]
    ceiling = v["loadsharing_group_max_current"] * v["loadsharing_safety_factor"]
    if members * fallback > ceiling:
        return (f"{members} members at loadsharing_failsafe_safe_current {fallback:g} A exceed "
                f"the group's {ceiling:g} A in failsafe")
    return None


@dataclass(frozen=True)
class GroupConfig:
    values: dict[str, Any]
    members: tuple[str, ...]  # sorted, this node included
    version: int = 0
    updated_at: float = 0.0
    hash: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "members", tuple(sorted(set(self.members))))
        object.__setattr__(self, "values", normalise(self.values))
        object.__setattr__(self, "hash", config_hash(self.values, self.members))

    def wire(self, device_id: str) -> dict[str, Any]:
        """The push body / the sync fields of ``/config``."""
        return {**self.values, MEMBERS: list(self.members), VERSION: self.version,
                UPDATED_AT: self.updated_at, HASH: self.hash, DEVICE: device_id}


def wins(theirs: tuple[int, str, float, str], ours: tuple[int, str, float, str]) -> bool:
    """(version, hash, updated_at, device_id): does ``theirs`` replace ``ours``?"""
    tv, th, tu, td = theirs
    ov, oh, ou, od = ours
    if tv != ov:
        return tv > ov
    if th == oh:
        return False
    if tu != ou:
        return tu > ou
    return td < od


class ConfigStore:
    """This node's group configuration, persisted with its version."""

    def __init__(self, state_dir: Path, log: logging.Logger, ini_values: dict[str, Any], *,
                 self_host: str, peers: tuple[str, ...], device_id: str) -> None:
        self.path = state_dir / FILE_NAME
        self.log = log
        self.self_host = self_host
        self.device_id = device_id
        body = read_json(self.path, log, "group configuration")
        seed = config_hash(ini_values, ())
        members = (self_host, *peers)
        try:
            stored = GroupConfig(body["values"], members, int(body["version"]),
                                 float(body["updated_at"]))
        except (KeyError, TypeError, ValueError):
            stored = None
        if stored is None:
            self.current = GroupConfig(ini_values, members)
        elif body.get("seed") != seed:
            log.info("load-sharing keys changed in the configuration file: a new group version")
            self.current = GroupConfig(ini_values, members, stored.version + 1, time.time())
        else:
            self.current = stored
        self._seed = seed
        self._persist()

    def _persist(self) -> None:
        c = self.current
        write_atomic(self.path, {"values": c.values, "version": c.version,
                                 "updated_at": c.updated_at, "seed": self._seed})

    @property
    def key(self) -> tuple[int, str, float, str]:
        c = self.current
        return (c.version, c.hash, c.updated_at, self.device_id)

    def local_change(self, values: dict[str, Any] | None = None,
                     members: tuple[str, ...] | None = None) -> GroupConfig:
        c = self.current
        new = GroupConfig({**c.values, **(values or {})},
                          c.members if members is None else (self.self_host, *members),
                          c.version + 1, round(time.time(), 3))
        if new.hash == c.hash:
            return c
        self.current = new
        self._persist()
        return new

    def offer(self, body: dict[str, Any]) -> tuple[bool, str]:
        """A peer's config (pushed or fetched): (adopted?, why not / what happened)."""
        try:
            members = tuple(str(m) for m in body[MEMBERS])
            theirs = GroupConfig({k: body[k] for k in SYNCED}, members, int(body[VERSION]),
                                 float(body[UPDATED_AT]))
            device = str(body.get(DEVICE, ""))
        except (KeyError, TypeError, ValueError) as exc:
            return False, f"incomplete group configuration ({exc})"
        if not wins((theirs.version, theirs.hash, theirs.updated_at, device), self.key):
            return False, "stale"
        msg = check_group(theirs.values, len(theirs.members))
        if msg is not None:
            return False, msg
        if self.self_host not in theirs.members:
            if len(theirs.members) < 2:
                return False, "a peer that left the group"  # its solo config is not ours
            # removed from the group by a peer: keep its values, go on alone, newer than it
            self.current = replace(theirs, members=(self.self_host,), version=theirs.version + 1,
                                   updated_at=round(time.time(), 3))
            self._persist()
            return True, "removed from the group"
        self.current = theirs
        self._persist()
        return True, "adopted"
