"""INI file + environment + ``--set`` -> one validated, typed :class:`GatewayConfig`.

``check`` and ``run`` call the same :func:`load_config`; every problem found is collected
(not just the first) as a :class:`ConfigProblem` naming file, line, section and key and saying
what was expected. Nothing here raises a traceback at a user for a malformed file.

Precedence, later wins: the INI file, then ``PGW_<SECTION>_<KEY>`` environment variables
(section and key upper-cased, every character other than a letter or digit replaced by ``_``,
e.g. ``PGW_TRANSPORT_0_READ_INTERVAL``), then ``--set section.key=value`` (split after the
longest section name of the file, else at the last dot: ``--set transport.0.read_interval=5``
and ``--set rs485_bus.meter1.unit=2`` both work).

Checks across sections (bridges, claims, warnings) are a list of functions at the end
(:data:`CHECKS`, :data:`WARNINGS`): one more is a function and a line.

Size: a little over the ~400-line guide: reading, overlaying, validating and the checks across
sections share the problem type and its placement (file line or override), kept together.
"""

from __future__ import annotations

import configparser
import difflib
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, SecretStr, ValidationError

import transports
from gateway import references
from gateway.settings import GeneralSettings, TransportSettings

GENERAL = "general"
ENV_PREFIX = "PGW_"
#: PGW_ variables that are not settings overrides.
RESERVED_ENV = frozenset({"PGW_PLUGINS", "PGW_RUN_DIR"})


@dataclass(frozen=True)
class ConfigProblem:
    """One thing wrong with the configuration, said so that a person can fix it."""

    source: str
    section: str
    key: str
    message: str
    line: int | None = None

    def __str__(self) -> str:
        where = self.source + (f":{self.line}" if self.line else "")
        place = f"[{self.section}]" if self.section else ""
        if self.key:
            place += f" {self.key}"
        return f"{where}: {place}: {self.message}" if place else f"{where}: {self.message}"


class ConfigError(Exception):
    """The configuration has problems; ``problems`` lists all of them."""

    def __init__(self, problems: Sequence[ConfigProblem]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


@dataclass(frozen=True)
class TransportConfig:
    name: str
    kind: str
    settings: TransportSettings


@dataclass(frozen=True)
class GatewayConfig:
    source: str
    general: GeneralSettings
    transports: dict[str, TransportConfig] = field(default_factory=dict)
    warnings: list[ConfigProblem] = field(default_factory=list)

    def targets_of(self, name: str) -> tuple[str, ...]:
        return self.transports[name].settings.bridge

    def sources_of(self, name: str) -> list[str]:
        return [n for n, t in self.transports.items() if name in t.settings.bridge]


def env_name(section: str, key: str) -> str:
    return ENV_PREFIX + _norm(section) + "_" + _norm(key)


def _norm(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]", "_", text).upper()


def _line_index(text: str) -> dict[tuple[str, str], int]:
    """(section, key) -> line number, and (section, "") -> the header's line."""
    index: dict[tuple[str, str], int] = {}
    section = ""
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped[0] in "#;":
            continue
        header = re.match(r"^\[([^\]]+)\]", stripped)
        if header:
            section = header.group(1).strip()
            index.setdefault((section, ""), number)
        elif not line[0].isspace():
            key = re.split(r"[=:]", stripped, maxsplit=1)[0].strip().lower()
            index.setdefault((section, key), number)
    return index


def read_ini(path: str | Path) -> tuple[dict[str, dict[str, str]], dict[tuple[str, str], int]]:
    """Parse the INI file into plain strings, turning parser errors into problems."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([ConfigProblem(source, "", "", "file not found")]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([ConfigProblem(source, "", "", f"cannot read: {exc}")]) from None
    parser = configparser.ConfigParser(interpolation=None, strict=True, default_section="\0")
    try:
        parser.read_string(text, source=source)
    except configparser.MissingSectionHeaderError as exc:
        # never echo the line: it may hold a password
        raise ConfigError(
            [ConfigProblem(source, "", "", "a key before any [section] header", exc.lineno)]
        ) from None
    except configparser.DuplicateSectionError as exc:
        raise ConfigError(
            [ConfigProblem(source, exc.section, "", "section appears twice", exc.lineno)]
        ) from None
    except configparser.DuplicateOptionError as exc:
        raise ConfigError(
            [ConfigProblem(source, exc.section, exc.option, "key appears twice in the section",
                           exc.lineno)]
        ) from None
    except configparser.ParsingError as exc:
        # by its number only: the line may hold a secret (and repr() would escape it twice)
        problems = [
            ConfigProblem(source, "", "", f"cannot parse line {lineno}: expected 'key = value', "
                          "a [section] header or a # comment (the line is not shown: it may "
                          "hold a secret)", lineno)
            for lineno, _line in exc.errors
        ]
        raise ConfigError(problems) from None
    except configparser.Error as exc:
        raise ConfigError([ConfigProblem(source, "", "", str(exc))]) from None
    raw = {name: dict(parser[name]) for name in parser.sections()}
    return raw, _line_index(text)


def apply_overrides(
    raw: dict[str, dict[str, str]],
    environ: Mapping[str, str],
    sets: Sequence[str],
    warnings: list[ConfigProblem],
    origins: dict[tuple[str, str], str] | None = None,
) -> list[ConfigProblem]:
    """Overlay environment variables, then ``--set`` values, onto ``raw`` (in place).

    A ``PGW_`` variable that matches no section is not an error (the same environment may
    serve several configurations) but it is reported as a warning. ``origins`` receives, per
    overridden (section, key), the override that set it: an error in its value names it.
    """
    origins = {} if origins is None else origins
    problems: list[ConfigProblem] = []
    sections = sorted(set(raw) | {GENERAL}, key=len, reverse=True)
    for name, value in sorted(environ.items()):
        if not name.startswith(ENV_PREFIX):
            continue
        rest = name[len(ENV_PREFIX):]
        for section in sections:
            prefix = _norm(section) + "_"
            if rest.startswith(prefix) and len(rest) > len(prefix):
                key = rest[len(prefix):].lower()
                raw.setdefault(section, {})[key] = value
                origins[(section, key)] = f"environment {name}"
                break
        else:
            if name not in RESERVED_ENV:
                warnings.append(ConfigProblem(
                    "environment", "", name, "ignored: names no section of the configuration "
                    f"(sections: {', '.join(sorted(raw)) or 'none'})"))
    for item in sets:
        target, sep, value = item.partition("=")
        target = target.strip()
        # The longest known section followed by a dot wins, so a key may hold dots too
        # (a bus's "meter1.unit"); otherwise the last dot splits section from key.
        known = next((name for name in sections if target.startswith(name + ".")), None)
        if known is not None:
            section, dot, key = known, ".", target[len(known) + 1:]
        else:
            section, dot, key = target.rpartition(".")
        if not sep or not dot or not section or not key:
            problems.append(ConfigProblem(
                "--set", "", item, "expected section.key=value, e.g. general.log_level=DEBUG"))
            continue
        key = key.strip().lower()
        raw.setdefault(section, {})[key] = value.strip()
        origins[(section, key)] = f"--set {target}"
    return problems


def _explain(model: type[BaseModel], err: dict[str, Any]) -> tuple[str, str]:
    """A pydantic error -> (key, message that says what was expected and what was given)."""
    key = str(err["loc"][0]) if err.get("loc") else ""
    kind = err.get("type", "")
    given = err.get("input")
    if kind == "extra_forbidden":
        known = [k for k in model.model_fields if k != "transport"]
        close = difflib.get_close_matches(key, known, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return key, f"unknown key{hint}; known keys: {', '.join(sorted(known))}"
    if kind == "missing":
        return key, "missing required key: " + (
            model.model_fields[key].description or "see the docs"
            if key in model.model_fields else "")
    message = err.get("msg", "invalid value")
    if isinstance(given, str):
        shown = "***" if _is_secret(model, key) else repr(given)
        message += f", got {shown}"
    return key, message


def _is_secret(model: type[BaseModel], key: str) -> bool:
    info = model.model_fields.get(key)
    return info is not None and "SecretStr" in repr(info.annotation)


def _validate(
    model: type[BaseModel], values: dict[str, str], source: str, section: str,
    lines: dict[tuple[str, str], int], *, origins: Mapping[tuple[str, str], str] | None = None,
) -> tuple[BaseModel | None, list[ConfigProblem]]:
    try:
        return model.model_validate(values), []
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            key, message = _explain(model, err)
            problems.append(_problem(source, section, key, message, lines=lines,
                                     origins=origins or {}))
        return None, problems


def _problem(source: str, section: str, key: str, message: str, *,
             lines: Mapping[tuple[str, str], int],
             origins: Mapping[tuple[str, str], str]) -> ConfigProblem:
    """A problem placed where its value came from: the file's line, or the override."""
    origin = origins.get((section, key))
    if origin:
        return ConfigProblem(origin, section, key, message)
    return ConfigProblem(source, section, key, message,
                         lines.get((section, key)) or lines.get((section, "")))


def load_config(
    path: str | Path,
    *,
    environ: Mapping[str, str] | None = None,
    sets: Sequence[str] = (),
    instance: int | None = None,
) -> GatewayConfig:
    """Read, overlay and validate; raise :class:`ConfigError` listing every problem."""
    source = str(path)
    raw, lines = read_ini(path)
    warnings: list[ConfigProblem] = []
    origins: dict[tuple[str, str], str] = {}
    problems = apply_overrides(raw, os.environ if environ is None else environ, sets, warnings,
                               origins)
    if instance is not None:
        raw.setdefault(GENERAL, {})["instance"] = str(instance)
        origins[(GENERAL, "instance")] = "--instance"

    general_model, general_problems = _validate(
        GeneralSettings, raw.get(GENERAL, {}), source, GENERAL, lines, origins=origins)
    problems += general_problems
    kinds = transports.names()  # known without importing one
    configs: dict[str, TransportConfig] = {}
    for section, values in raw.items():
        if section == GENERAL:
            continue
        kind = values.get("transport", "").strip()
        if not kind or kind not in kinds:
            problems.append(_problem(source, section, "transport",
                                     _kind_problem(kind, kinds), lines=lines, origins=origins))
            # the keys every section has are still checked: every problem, not the first
            common = {k: v for k, v in values.items() if k in TransportSettings.model_fields}
            _, common_problems = _validate(TransportSettings, dict(common, transport=kind or "?"),
                                           source, section, lines, origins=origins)
            problems += common_problems
            continue
        model, section_problems = _validate(transports.settings_for(kind), values, source, section,
                                            lines, origins=origins)
        problems += section_problems
        if model is not None:
            assert isinstance(model, TransportSettings)
            configs[section] = TransportConfig(section, kind, model)

    view = CheckInput(source, raw, lines, origins, configs,
                      general_model if isinstance(general_model, GeneralSettings) else None)
    for check in CHECKS:
        problems += check(view)
    for check in WARNINGS:
        warnings += check(view)
    # references between sections (a loadsharing section's charger =): gateway/references.py
    ref_errors, ref_warnings = references.check(
        configs, source, lines,
        lambda _src, section, key, message, _line=None: view.problem(section, key, message),
        view.names)
    problems += ref_errors
    warnings += ref_warnings
    if problems:
        raise ConfigError(problems)
    assert isinstance(general_model, GeneralSettings)
    return GatewayConfig(source, general_model, references.resolve(configs), warnings)


def _kind_problem(kind: str, registry: list[str]) -> str:
    if not kind:
        return (f"missing: every section but [general] names its transport kind "
                f"(one of {', '.join(sorted(registry))})")
    close = difflib.get_close_matches(kind, list(registry), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown transport kind {kind!r}{hint}; known: {', '.join(sorted(registry))}"


# --- checks across sections ------------------------------------------------------------------
# What no single section can know. Each check takes the whole (validated) configuration and
# returns problems (errors) or warnings; adding one is a function and a line in CHECKS or
# WARNINGS below.

@dataclass(frozen=True)
class CheckInput:
    """Everything a check across sections may look at."""

    source: str
    raw: dict[str, dict[str, str]]  # every section's values as strings, overrides applied
    lines: dict[tuple[str, str], int]
    origins: dict[tuple[str, str], str]  # (section, key) -> the override that set it
    configs: dict[str, TransportConfig]  # the sections that validated
    general: GeneralSettings | None  # None when [general] itself has problems

    def problem(self, section: str, key: str, message: str) -> ConfigProblem:
        return _problem(self.source, section, key, message, lines=self.lines,
                        origins=self.origins)

    @property
    def names(self) -> set[str]:
        return set(self.raw) - {GENERAL}


def check_bridges(view: CheckInput) -> list[ConfigProblem]:
    """Every ``bridge =`` target exists and is not the section itself."""
    problems: list[ConfigProblem] = []
    names = view.names
    for name in sorted(names):
        for target in (t.strip() for t in view.raw[name].get("bridge", "").split(",")):
            if not target:
                continue
            if target == name:
                problems.append(view.problem(name, "bridge",
                                             "a transport cannot bridge to itself"))
            elif target not in names:
                problems.append(view.problem(
                    name, "bridge", f"names section {target!r}, which does not exist "
                    f"(sections: {', '.join(sorted(names))})"))
    return problems


def check_claims(view: CheckInput) -> list[ConfigProblem]:
    """One registry of exclusive resources, ``[general] http_port`` included: two sections
    on one serial port, or on one listening port (a wildcard host clashes with any), fail."""
    from gateway.claims import Claim  # gateway.claims imports this module's types

    held: list[Claim] = []
    if view.general is not None and view.general.http_port:
        held.append(Claim("tcp listen",
                          f"{view.general.http_host}:{view.general.http_port}", GENERAL))
    problems: list[ConfigProblem] = []
    for name, cfg in view.configs.items():
        for what, identity in cfg.settings.claims():
            claim = Claim(what, identity, name)
            owner = next((c for c in held if c.clashes_with(claim)), None)
            if owner is None:
                held.append(claim)
                continue
            by = ("[general] http_port (the status page)" if owner.section == GENERAL
                  else f"[{owner.section}]")
            problems.append(view.problem(name, "", f"{what} {identity} is already used by {by}"))
    return problems


def warn_missing_serial_devices(view: CheckInput) -> list[ConfigProblem]:
    """A serial device that is not there now: a warning (it may be plugged in later, and the
    transport waits for it), said clearly instead of silently."""
    warnings: list[ConfigProblem] = []
    for name, cfg in view.configs.items():
        for what, identity in cfg.settings.claims():
            if what == "serial port" and identity.startswith("/") and not os.path.exists(
                    identity):
                warnings.append(view.problem(
                    name, "port", f"serial device {identity} does not exist now (not plugged "
                    "in, or a typo?); the transport will wait for it. "
                    "`protocol-gateway ports` lists the ports present"))
    return warnings


def warn_isolated_sections(view: CheckInput) -> list[ConfigProblem]:
    """A section that receives nothing and sends nowhere moves no data."""
    targets = {t for cfg in view.configs.values() for t in cfg.settings.bridge}
    return [view.problem(name, "bridge", "receives nothing and sends nowhere: add "
                         "`bridge = <an output section>` here, or name this section in "
                         "another section's bridge")
            for name, cfg in view.configs.items()
            if not cfg.settings.bridge and name not in targets]


CHECKS: list[Callable[[CheckInput], list[ConfigProblem]]] = [check_bridges, check_claims]
WARNINGS: list[Callable[[CheckInput], list[ConfigProblem]]] = [
    warn_missing_serial_devices, warn_isolated_sections]


def effective_settings(config: GatewayConfig) -> dict[str, dict[str, Any]]:
    """Every section's effective values, secrets masked: what ``--print-config`` shows."""

    def plain(model: BaseModel) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in model.model_dump().items():
            if isinstance(value, SecretStr):
                out[key] = "***" if value.get_secret_value() else ""
            elif isinstance(value, (tuple, list)):
                out[key] = ", ".join(str(v) for v in value)
            else:
                out[key] = value
        return out

    result = {GENERAL: plain(config.general)}
    for name, cfg in config.transports.items():
        result[name] = plain(cfg.settings)
    return result


def render_ini(sections: dict[str, dict[str, Any]]) -> str:
    lines: list[str] = []
    for section, values in sections.items():
        lines.append(f"[{section}]")
        lines += [f"{key} = {value}" for key, value in values.items()]
        lines.append("")
    return "\n".join(lines)
