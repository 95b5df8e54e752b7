"""Imported last by the fork server: completes and freezes what the imports before it made.

Why a module: the fork server (gateway/forkserver.py) imports a list of module names in order
before it forks any child; this one comes last, after all the others.
It first imports what the transport modules list in ``PRELOAD`` (libraries they import lazily
so that the supervisor, which only validates their sections, does not carry them), then runs
``gc.freeze()``: the frozen objects sit in a permanent generation the collector never walks,
so neither the forkserver nor a child (which inherits that state) touches their pages to scan
them, and they stay shared copy-on-write between all the children.
"""

from __future__ import annotations

import gc
import importlib
import sys


def _preload_lazy_imports() -> None:
    for name in [n for n in list(sys.modules) if n.startswith("transports.")]:
        for module in getattr(sys.modules[name], "PRELOAD", ()):
            importlib.import_module(module)


_preload_lazy_imports()
gc.collect()
gc.freeze()
