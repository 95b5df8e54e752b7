"""What transports/ must not write again (issue 22): a reconnect or retry loop (they live in
gateway/reconnect.py), or the driving of a store-and-forward buffer (gateway/buffered.py).
Read with ast, so comments and strings cannot fool it; each check is shown the code it
forbids, so it can fail."""

from __future__ import annotations

import ast
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TRANSPORTS = ROOT / "transports"
WAITS = {"sleep", "_sleep", "wait_retry"}
LEAVES = (ast.Raise, ast.Return, ast.Continue, ast.Break)


# -- structure ---------------------------------------------------------------------------------
def _walk_here(node: ast.AST) -> Iterator[ast.AST]:
    """``ast.walk`` without entering nested functions (a closure is not this loop's code)."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            continue
        yield child
        yield from _walk_here(child)


def _waits(nodes: list[ast.stmt]) -> bool:
    for stmt in nodes:
        for node in [stmt, *_walk_here(stmt)]:
            if isinstance(node, ast.Await) and isinstance(node.value, ast.Call):
                func = node.value.func
                name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
                if name in WAITS:
                    return True
    return False


def retry_loops(source: str) -> list[str]:
    """Where ``source`` hand-rolls a retry: a ``next_delay()`` call, or a loop that catches an
    exception and then waits (in the handler, or after a handler that falls through)."""
    found = []
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            if (func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")) \
                    == "next_delay":
                found.append(f"line {node.lineno}: next_delay()")
        if not isinstance(node, ast.While | ast.For | ast.AsyncFor):
            continue
        for i, stmt in enumerate(node.body):
            for inner in [stmt, *_walk_here(stmt)]:
                if not isinstance(inner, ast.Try):
                    continue
                for handler in inner.handlers:
                    falls_through = not isinstance(handler.body[-1], LEAVES)
                    if _waits(handler.body) or (falls_through and _waits(node.body[i + 1:])):
                        found.append(f"line {node.lineno}: a loop that waits after a failure")
    return found


def under_transports(check: Callable[[str], list[str]]) -> dict[str, list[str]]:
    """File -> what ``check`` finds in it, for every module under transports/."""
    return {str(path.relative_to(ROOT)): where for path in sorted(TRANSPORTS.rglob("*.py"))
            if (where := check(path.read_text()))}


def test_no_reconnect_or_retry_loop_under_transports() -> None:
    found = under_transports(retry_loops)
    assert not found, f"use gateway.reconnect (LinkKeeper, retry) instead: {found}"


#: what driving a store-and-forward buffer takes (gateway/buffer.py); outputs subclass
#: gateway.buffered.BufferedOutput and give write(batch) instead
BUFFER_DRIVING = {"StoreAndForward", "peek", "ack", "accept", "deliver_once"}


def buffer_drivers(source: str) -> list[str]:
    """Where ``source`` drives a store-and-forward buffer: imports or calls of its machinery."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module == "gateway.buffer":
            names = {a.name for a in node.names} & BUFFER_DRIVING
            found += [f"line {node.lineno}: imports {n}" for n in sorted(names)]
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and \
                isinstance(node.func.value, ast.Attribute) and node.func.value.attr == "buffer" \
                and node.func.attr in BUFFER_DRIVING | {"run", "open", "close"}:
            found.append(f"line {node.lineno}: buffer.{node.func.attr}()")
    return found


def test_no_buffer_driver_under_transports() -> None:
    found = under_transports(buffer_drivers)
    assert not found, f"subclass gateway.buffered.BufferedOutput instead: {found}"
    # the check sees the driving it forbids (gateway/buffered.py is that driving)
    assert buffer_drivers((ROOT / "gateway" / "buffered.py").read_text())


@pytest.mark.parametrize("source", [
    # the loop DeviceTransport.run held before it moved to gateway/reconnect.py
    """
async def run(self):
    while not stopping.is_set():
        try:
            link = await self.open()
        except PeerUnavailable as exc:
            lost = exc
        else:
            await self.serve(link)
            continue
        self._failure.failed(lost)
        await self.wait_retry(self.backoff_delay)
""",
    # a hand-made backoff in the handler
    """
async def follow(link):
    delay = 1.0
    while True:
        try:
            await session(link)
        except OSError:
            await asyncio.sleep(delay)
            delay = min(60.0, delay * 2)
""",
    # a bounded retry with next_delay
    """
async def push():
    for _ in range(6):
        if await post():
            return
        await asyncio.sleep(backoff.next_delay())
""",
])
def test_the_structural_check_sees_a_retry_loop(source: str) -> None:
    assert retry_loops(source)


def test_the_structural_check_lets_a_periodic_loop_be() -> None:
    """A pulse that skips a beat on an error is no retry (rapi_serial's ``_pulse``)."""
    assert not retry_loops("""
async def pulse():
    while True:
        await asyncio.sleep(1.0)
        try:
            await request("SY")
        except LinkDown:
            continue
""")
