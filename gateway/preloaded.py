"""Imported last by the forkserver: what the imports before it made is frozen for good.

Why a module: ``set_forkserver_preload`` takes module names and imports them in order in the
forkserver, before it forks any child; importing this one there runs ``gc.freeze()`` after
all the others. The frozen objects sit in a permanent generation the collector never walks,
so neither the forkserver nor a child (which inherits the state) touches their pages to
scan them: they stay shared copy-on-write between all the children.
"""

from __future__ import annotations

import gc

gc.collect()
gc.freeze()
