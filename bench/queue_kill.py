"""Why the bridge uses one-way pipes, not a ``multiprocessing.Queue`` per transport.

    python bench/queue_kill.py [--size 200000] [--wait 10]

A child puts one ``--size`` byte batch on a Queue and is SIGKILLed while its feeder thread is
still writing it (a pipe holds 64 KiB; the rest waits for the reader). The reader then calls
``get(timeout=2)``: the first bytes are there, so the timeout is over and ``recv_bytes`` reads
the rest of a message that will never come. No EOF either: a Queue's owner holds the write end
too. The same kill on a one-way pipe whose reader closed its write end: ``recv_bytes`` raises
at once (OSError "got end of file during message"; EOFError between messages). Prints both
outcomes; exits 0 whatever they are (the stuck reader thread is abandoned with ``os._exit``).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import signal
import threading
import time
from multiprocessing.connection import Connection
from typing import Any


def _put(q: Any, size: int) -> None:
    q.put(b"x" * size)
    time.sleep(3600)  # the feeder thread is blocked writing; we are killed meanwhile


def _send(conn: Connection, size: int) -> None:
    conn.send_bytes(b"x" * size)  # blocks after the pipe's 64 KiB until killed
    time.sleep(3600)


def try_read(read: Any, wait: float) -> str:
    outcome: list[str] = []

    def reader() -> None:
        start = time.monotonic()
        try:
            read()
            outcome.append(f"returned a message after {time.monotonic() - start:.2f} s")
        except Exception as exc:  # noqa: BLE001 - the point is what it raises
            outcome.append(f"raised {type(exc).__name__} after {time.monotonic() - start:.2f} s")

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    thread.join(wait)
    return outcome[0] if outcome else f"still blocked after {wait:g} s"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=200_000)
    parser.add_argument("--wait", type=float, default=10.0)
    args = parser.parse_args()
    ctx = mp.get_context("forkserver")

    q = ctx.Queue()
    child = ctx.Process(target=_put, args=(q, args.size))
    child.start()
    time.sleep(1.0)  # the feeder has filled the pipe and waits for the reader
    os.kill(child.pid, signal.SIGKILL)
    child.join()
    print(f"Queue, child SIGKILLed mid-put of {args.size:,} bytes: get(timeout=2) "
          f"{try_read(lambda: q.get(timeout=2), args.wait)}")

    reader, writer = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_send, args=(writer, args.size))
    child.start()
    writer.close()  # what the supervisor does: the child holds the only write end
    time.sleep(1.0)
    os.kill(child.pid, signal.SIGKILL)
    child.join()
    print(f"one-way pipe, same kill: recv_bytes() {try_read(reader.recv_bytes, args.wait)}")
    os._exit(0)


if __name__ == "__main__":
    main()
