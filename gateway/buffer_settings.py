"""The keys every buffered output has, apart from the buffer's code.

Why a module of its own: the supervisor validates an output's section with these keys, and
must not import the buffer itself (SQLite, the delivery loop) to do it; the process that runs
the output imports :mod:`gateway.buffer`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from gateway.settings import TransportSettings


class BufferSettings(TransportSettings):
    """Keys every buffered output has (a mixin for the outputs' own settings classes)."""

    buffer_size: int = Field(
        default=100_000, ge=1, description="envelopes kept on disk while the sink is down; "
        "past it the oldest are dropped (counted and logged)"
    )
    batch_size: int = Field(default=100, ge=1, description="envelopes per write to the sink")
    flush_interval: float = Field(
        default=0.0, ge=0, description="seconds to wait for a full batch before writing a "
        "partial one; 0 = write whatever is waiting at once"
    )
    buffer_commit_rows: int = Field(
        default=100, ge=1, description="at most this many envelopes per SQLite transaction"
    )
    buffer_commit_interval: float = Field(
        default=0.0, ge=0, description="seconds to gather envelopes before a commit; 0 = each "
        "batch is on disk before it is acknowledged (a kill -9 loses nothing accepted)"
    )
    buffer_sync: Literal["normal", "full"] = Field(
        default="normal", description="SQLite synchronous mode: normal survives a process "
        "crash, full also a power cut (slower, wears SD cards)"
    )
    retry_initial: float = Field(default=1.0, gt=0, description="first retry delay, seconds")
    retry_max: float = Field(default=30.0, gt=0, description="longest retry delay, seconds")
    drain_timeout: float = Field(
        default=5.0, ge=0, description="on shutdown, seconds spent delivering what waits; the "
        "rest stays on disk for the next start"
    )
