"""The persisted member list: which hosts this node shares its breaker with.

Kept in OpenEVSE's shape (``{"peers": ["host", ...]}``, its ``/loadsharing_peers.json``) plus our
config-sync fields, written to a temporary name and renamed so that a crash mid-write leaves the
old file whole. A missing file is an empty group; a corrupt one is logged and treated as empty
(the node then runs alone until peers are added again: the safe direction).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

FILE_NAME = "loadsharing_peers.json"


def valid_host(host: str) -> str | None:
    """OpenEVSE's 400 message for a bad ``host``, or None (a host needs a ``.`` or ``:``)."""
    if not host:
        return "Host cannot be empty"
    if "." not in host and ":" not in host:
        return "Invalid host format - must contain domain or IP"
    if len(host) > 253 or any(c.isspace() or c in "/?#@" for c in host):
        return "Invalid host format - must contain domain or IP"
    return None


def write_atomic(path: Path, body: dict[str, Any]) -> None:
    """Write JSON to ``path`` via a temporary file and rename (atomic on POSIX)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(body, fh, indent=1, sort_keys=True)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def read_json(path: Path, log: logging.Logger, what: str) -> dict[str, Any]:
    """The JSON object in ``path``; {} when missing, and {} with a warning when corrupt."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        log.warning("%s %s unreadable (%s): starting empty", what, path, exc)
        return {}
    try:
        body = json.loads(raw)
        if not isinstance(body, dict):
            raise ValueError("not a JSON object")
    except (UnicodeDecodeError, ValueError) as exc:
        shown = raw[:200].decode("utf-8", "backslashreplace").encode("unicode_escape")
        log.warning("%s %s is corrupt (%s): treated as empty; content %s", what, path, exc,
                    shown.decode("ascii"))
        return {}
    return body


class MemberStore:
    """The hosts of the group other than this node, persisted on every change."""

    def __init__(self, state_dir: Path, log: logging.Logger) -> None:
        self.path = state_dir / FILE_NAME
        self.log = log
        body = read_json(self.path, log, "member list")
        peers = body.get("peers", [])
        if not isinstance(peers, list) or not all(isinstance(p, str) for p in peers):
            if body:
                log.warning("member list %s: 'peers' is not a list of hosts: treated as empty",
                            self.path)
            peers = []
        self._peers = sorted({p for p in peers if valid_host(p) is None})

    @property
    def peers(self) -> tuple[str, ...]:
        return tuple(self._peers)

    def replace(self, peers: set[str] | tuple[str, ...] | list[str]) -> bool:
        """Set the list; True (and persisted) when it changed."""
        new = sorted(set(peers))
        if new == self._peers:
            return False
        self._peers = new
        write_atomic(self.path, {"peers": new})
        return True

    def add(self, host: str) -> bool:
        return self.replace({*self._peers, host})

    def remove(self, host: str) -> bool:
        return self.replace({p for p in self._peers if p != host})
