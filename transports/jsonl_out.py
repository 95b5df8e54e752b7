"""``jsonl_out``: every envelope it receives as one JSON line, in a file or on stdout.

Useful alone (an audit trail a person can grep, or feed to jq) and the simplest output to test
the bridge with: sequence numbers make loss or duplication visible. Rotates by size
(``path.1`` ... ``path.N``, newest first, like logrotate) and flushes on shutdown.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import IO, ClassVar

from pydantic import Field

from gateway.message import COMMAND, EVENT, READING, STATUS, Envelope
from gateway.settings import TransportSettings
from transports import register
from transports.base import Transport


class JsonlSettings(TransportSettings):
    path: str = Field(default="-", description="file to append to; '-' for standard output")
    max_bytes: int = Field(default=10_000_000, ge=0,
                           description="rotate when the file grows past this; 0 = never")
    backup_count: int = Field(default=3, ge=0, description="rotated files to keep")
    fsync: bool = Field(default=False, description="fsync after each batch (slow on SD cards)")

    def claims(self) -> list[tuple[str, str]]:
        if self.path == "-":
            return []
        return [("output file", os.path.abspath(self.path))]


@register
class JsonlOut(Transport[JsonlSettings]):
    kind = "jsonl_out"
    Settings = JsonlSettings
    accepts: ClassVar[frozenset[str]] = frozenset({READING, EVENT, STATUS, COMMAND})
    records_commands = True  # a command here is a record to write, not an order

    def __init__(self, settings: JsonlSettings, ctx) -> None:  # type: ignore[no-untyped-def]
        super().__init__(settings, ctx)
        self._file: IO[str] | None = None

    def _open(self) -> IO[str]:
        if self._file is None:
            if self.settings.path == "-":
                self._file = sys.stdout
            else:
                Path(self.settings.path).parent.mkdir(parents=True, exist_ok=True)
                self._file = open(self.settings.path, "a", encoding="utf-8")
        return self._file

    def _rotate_if_needed(self) -> None:
        s = self.settings
        if s.path == "-" or s.max_bytes == 0 or self._file is None:
            return
        if self._file.tell() < s.max_bytes:
            return
        self._file.close()
        self._file = None
        if s.backup_count == 0:
            os.truncate(s.path, 0)
            return
        for index in range(s.backup_count - 1, 0, -1):
            older = f"{s.path}.{index}"
            if os.path.exists(older):
                os.replace(older, f"{s.path}.{index + 1}")
        os.replace(s.path, f"{s.path}.1")

    async def receive(self, envelope: Envelope) -> None:
        await self.receive_batch([envelope])

    async def receive_batch(self, envelopes: list[Envelope]) -> None:
        out = self._open()
        out.write("".join(json.dumps(e.to_dict(), default=str, separators=(",", ":")) + "\n"
                          for e in envelopes))
        out.flush()
        if self.settings.fsync and out is not sys.stdout:
            os.fsync(out.fileno())
        self._rotate_if_needed()

    async def close(self) -> None:
        if self._file is not None and self._file is not sys.stdout:
            self._file.flush()
            self._file.close()
        self._file = None
