"""The OpenEVSE member role a masterless node took at run time, kept across restarts.

A user with an OpenEVSE controller adds the gateway from the controller's own UI: the controller
sends the reciprocal add, then pushes ``loadsharing_role = member`` with its host. A masterless
node that is alone (or whose only peer is that controller, from its reciprocal add) accepts the
push, keeps it here and runs the member role (``OpenEvseMemberRole``) until the controller resets
the role, then goes back to the masterless protocol. A node whose role is set in its INI file
never switches: the file wins, this file is not read.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from transports.loadsharing.members import write_atomic

FILE_NAME = "openevse_role.json"


class RoleStore:
    def __init__(self, state_dir: Path, log: logging.Logger) -> None:
        self.path = state_dir / FILE_NAME
        self.log = log

    def load(self) -> dict[str, Any] | None:
        """The controller's push that made this node a member, or None."""
        try:
            body = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            self.log.warning("%s unreadable (%s): running the masterless protocol", self.path,
                             exc)
            return None
        if not isinstance(body, dict) or body.get("loadsharing_role") != "member":
            return None
        return body

    def save(self, push: dict[str, Any]) -> None:
        write_atomic(self.path, push)

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)


def refusal(peers: tuple[str, ...], controller: str) -> str | None:
    """Why a masterless node can't join an OpenEVSE controller's group now, or None."""
    others = [p for p in peers if p != controller]
    if others:
        return (f"this node shares its breaker with {', '.join(others)} (masterless group): "
                "remove it from that group first")
    return None
