"""References between sections, checked in one place at load (``check`` and ``run`` alike).

A section that names another (a loadsharing section's ``charger =``) declares it next to its
``claims()``: ``references()`` returns :class:`Reference` entries saying which key names which
section, the capability that section must provide (a transport class's ``provides``), whether
it must bridge back (its envelopes must reach the referring section), whether the reference is
exclusive (one writer per charger), and which key of the named section records the referrer.

:func:`check` turns every broken reference into a :class:`~gateway.config.ConfigProblem` naming
file, line, section and key; :func:`resolve` writes the referrer into the named section's
settings (``charger_owner``), so that a charger transport knows, from its first envelope, whose
writes to follow and whose to forward. A referring section may also ``advise_on(reference,
named settings)``: warnings about a valid but doubtful pair.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import transports

if TYPE_CHECKING:
    from gateway.config import ConfigProblem, TransportConfig

Lines = dict[tuple[str, str], int]


@dataclass(frozen=True)
class Reference:
    key: str  # the referring section's key that holds the name
    section: str  # the section named
    capability: str  # what the named section's transport must provide
    bridge_back: bool = True  # the named section must bridge to the referring one
    exclusive: bool = True  # no other section may name it with the same key
    owner_key: str = ""  # the named section's key that is set to the referring section


def references_of(cfg: TransportConfig) -> list[Reference]:
    fn: Callable[[], list[Reference]] | None = getattr(cfg.settings, "references", None)
    return list(fn()) if fn is not None else []


def check(configs: dict[str, TransportConfig], source: str, lines: Lines,
          problem: Callable[..., ConfigProblem], sections: set[str] | None = None,
          ) -> tuple[list[ConfigProblem], list[ConfigProblem]]:
    """(errors, warnings) of every reference; ``problem`` builds a ConfigProblem.
    ``sections``: every section of the file (one that failed validation has its own errors)."""
    errors: list[ConfigProblem] = []
    warnings: list[ConfigProblem] = []
    taken: dict[tuple[str, str], str] = {}

    def at(section: str, key: str) -> int | None:
        return lines.get((section, key)) or lines.get((section, ""))

    for name, cfg in sorted(configs.items()):
        for key, message in _advice(cfg):
            warnings.append(problem(source, name, key, message, at(name, key)))
        for ref in references_of(cfg):
            line = at(name, ref.key)
            target = configs.get(ref.section)
            if target is None and sections is not None and ref.section in sections:
                continue  # it exists, with errors of its own
            if target is None:
                errors.append(problem(
                    source, name, ref.key,
                    f"names section {ref.section!r}, which does not exist (sections: "
                    f"{', '.join(sorted(configs)) or 'none'})", line))
                continue
            if ref.capability not in transports.provides(target.kind):
                able = [k for k in transports.names() if ref.capability in transports.provides(k)]
                errors.append(problem(
                    source, name, ref.key,
                    f"names [{ref.section}], a {target.kind} transport, which is not a "
                    f"{ref.capability} (transports that are: {', '.join(able) or 'none'})", line))
                continue
            if ref.bridge_back and name not in target.settings.bridge:
                bridge = lines.get((ref.section, "bridge"))
                fix = f"add {name} to its bridge = (line {bridge})" if bridge else \
                    f"add bridge = {name} to [{ref.section}]"
                errors.append(problem(
                    source, name, ref.key,
                    f"names [{ref.section}], which does not bridge back: {fix}, or this section "
                    "never hears from it", line))
            advise = getattr(cfg.settings, "advise_on", None)
            for message in (advise(ref, target.settings) if advise is not None else ()):
                warnings.append(problem(source, name, ref.key, message, line))
            if ref.exclusive:
                other = taken.get((ref.section, ref.key))
                if other is not None:
                    errors.append(problem(
                        source, name, ref.key,
                        f"[{ref.section}] is already the {ref.key} of [{other}]: one section "
                        f"writes a {ref.capability}'s current", line))
                else:
                    taken[(ref.section, ref.key)] = name
            if ref.owner_key and getattr(target.settings, ref.owner_key, "") not in ("", name):
                errors.append(problem(
                    source, ref.section, ref.owner_key,
                    f"is set at load from [{name}] {ref.key} =; leave it out of the file",
                    at(ref.section, ref.owner_key)))
    return errors, warnings


def _advice(cfg: TransportConfig) -> list[tuple[str, str]]:
    fn: Callable[[], list[tuple[str, str]]] | None = getattr(cfg.settings, "advice", None)
    return list(fn()) if fn is not None else []


def resolve(configs: dict[str, TransportConfig]) -> dict[str, TransportConfig]:
    """The configs with each referenced section's owner key set (after a clean :func:`check`)."""
    out = dict(configs)
    for name, cfg in configs.items():
        for ref in references_of(cfg):
            target = out.get(ref.section)
            if target is None or not ref.owner_key:
                continue
            update: dict[str, Any] = {ref.owner_key: name}
            out[ref.section] = replace(target, settings=target.settings.model_copy(update=update))
    return out
