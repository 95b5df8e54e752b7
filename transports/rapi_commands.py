"""Command envelopes of ``rapi_serial``: run a planned command step by step, say how it went.

What a write or a verb means in RAPI commands is pure planning (``protocols/rapi_values.py``);
this is the asynchronous half, apart from the transport so that its module holds the
connection's life cycle: send each step through the transport's request function, stop at the
first NK, timeout or lost link, and fold the replies into one ``command_result``. What a command
leaves behind for the session (the current to restore after a reconnect or a missed heartbeat,
the heartbeat interval to pulse) is kept in :class:`CommandState`, which the transport reads.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from gateway.message import command_result
from protocols.rapi import RapiCommandError, RapiFrame
from protocols.rapi_values import CommandRejected, plan_command, step_outcome
from transports.serial_link import LinkDown

#: ``send(name, *params)``: one command and its reply, None on timeout; may raise LinkDown.
Send = Callable[..., Awaitable[RapiFrame | None]]


@dataclass
class CommandState:
    """What commands set that outlives them: the controller forgets it on a reboot."""

    #: seconds between our ``$SY`` pulses; 0 = no pulses
    pulse_interval: float
    #: the last current a ``$SC`` set (or clamped to), re-sent after a reconnect
    last_current: int | None = None


async def execute_command(
    data: dict[str, Any], send: Send, connected: bool, state: CommandState,
    log: logging.Logger,
) -> dict[str, Any]:
    """The ``command_result`` for one command envelope's ``data``; never raises for bad input."""
    try:
        plan = plan_command(data)
    except CommandRejected as exc:
        log.warning("command %r rejected: %s", data.get("command"), exc)
        return command_result(data, False, exc.result, str(exc))
    if not connected:
        return command_result(data, False, "error", "controller not connected")
    extra: dict[str, Any] = {}
    for step in plan.steps:
        try:
            reply = await send(step.name, *step.params)
        except RapiCommandError as exc:
            return command_result(data, False, "rejected", str(exc))
        except LinkDown as exc:
            return command_result(data, False, "error", f"link lost: {exc}")
        if reply is None:
            return command_result(data, False, "timeout", f"no reply to ${step.name}", **extra)
        extra.update(step_outcome(step, reply.ok, reply.params))
        if step.name == "SC" and (reply.ok or "amps" in extra):
            state.last_current = extra["amps"]
        if not reply.ok:
            return command_result(data, False, "nk", f"${step.name} answered NK", **extra)
    if plan.pulse_interval is not None:
        state.pulse_interval = plan.pulse_interval
    return command_result(data, True, "ok", **extra)
