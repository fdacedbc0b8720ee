"""Configuration: defaults, then ``config.toml`` in the instance directory, then ``LOCKER_*``.

Every key is declared once in :data:`KEYS` with its default and a one-line description; that
declaration is the documentation (``locker config example`` prints it as a commented file,
and ``locker init`` writes that file). Values are validated when the configuration is loaded,
and a bad value raises :class:`~kiosk.errors.ConfigError` naming the key and where it came
from, e.g. ``config.toml [policy] deposit_window: expected HH:MM-HH:MM, got '7.30'``.

Environment variables are ``LOCKER_<SECTION>_<KEY>`` in capitals, e.g.
``LOCKER_POLICY_TIMEZONE=Europe/London`` or ``LOCKER_DATABASE_URL=postgresql+psycopg://...``.
Any other ``LOCKER_*`` variable is an error naming it (a misspelt override must not be
ignored in silence), except the few of :data:`OTHER_VARIABLES` and :data:`OTHER_PREFIXES`
that the instance directory and the install's scripts use.

The ``[hardware]`` table belongs to the hardware layer: it is passed through as read (with
``LOCKER_HARDWARE_*`` overrides as strings) and validated by :mod:`hardware.spec`, which this
module never imports (the web process loads the configuration too). A caller that may import
it passes a :class:`HardwareSchema`, so that an unknown or bad ``LOCKER_HARDWARE_*`` variable
is refused at load naming the variable. ``[hardware] compartments`` defaults to ``[kiosk]
compartments`` (laid out by the default layout), so a fresh instance checks out.
"""

from __future__ import annotations

import difflib
import logging
import os
import re
import tomllib
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from datetime import time
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy.engine import URL

from kiosk.errors import ConfigError

log = logging.getLogger(__name__)

CONFIG_FILENAME = "config.toml"
ENV_PREFIX = "LOCKER_"
ROLES = ("staff", "office", "dsl", "admin")
#: The roles ``[policy] release_roles`` may name.
RELEASE_ROLES = ("office", "dsl", "admin")

#: ``LOCKER_*`` variables that are not settings, and what sets or reads them. Every other
#: ``LOCKER_*`` variable must name a key (``LOCKER_<SECTION>_<KEY>``)...
OTHER_VARIABLES: dict[str, str] = {
    "LOCKER_HOME": "the instance directory (like --home)",
    "LOCKER_BIN": "the locker program the nightly backup script runs (install/locker-backup.sh)",
}
#: ... or start with one of these, kept for the install's scripts (they check their own).
OTHER_PREFIXES: dict[str, str] = {
    "LOCKER_BACKUP_": "settings of the nightly backup script (install/locker-backup.sh)",
    "LOCKER_SCREEN_": "settings of the kiosk screen script (install/locker-screen.sh)",
}


def _not_a_setting(variable: str) -> bool:
    """``variable`` is one of :data:`OTHER_VARIABLES` or :data:`OTHER_PREFIXES`."""
    return variable in OTHER_VARIABLES or variable.startswith(tuple(OTHER_PREFIXES))


NAME_DISPLAYS = ("first_name_initial", "first_name", "initials", "none")


# --------------------------------------------------------------------------------------
# Value parsers: each takes a TOML value or an environment string and returns the typed
# value, or raises ValueError with a short reason.


@dataclass(frozen=True)
class Window:
    """A daily window in the school's local time, start inclusive, end exclusive."""

    start: time
    end: time  # time.max stands for 24:00

    def contains(self, local: time) -> bool:
        return self.start <= local < self.end or (self.end == time.max and local >= self.start)

    def __str__(self) -> str:
        end = "24:00" if self.end == time.max else self.end.strftime("%H:%M")
        return f"{self.start.strftime('%H:%M')}-{end}"


_TIME_RE = re.compile(r"^\s*([01]?\d|2[0-4]):([0-5]\d)\s*$")


def parse_time_of_day(value: Any) -> time:
    if isinstance(value, time):
        return value
    if not isinstance(value, str):
        raise ValueError(f"expected a time HH:MM, got {value!r}")
    match = _TIME_RE.match(value)
    if not match:
        raise ValueError(f"expected a time HH:MM, got {value!r}")
    hours, minutes = int(match[1]), int(match[2])
    if hours == 24:
        if minutes:
            raise ValueError(f"expected a time HH:MM, got {value!r}")
        return time.max
    return time(hours, minutes)


def parse_window(value: Any) -> Window:
    if isinstance(value, Window):
        return value
    if not isinstance(value, str) or value.count("-") != 1:
        raise ValueError(f"expected HH:MM-HH:MM, got {value!r}")
    first, second = value.split("-")
    try:
        start, end = parse_time_of_day(first), parse_time_of_day(second)
    except ValueError:
        raise ValueError(f"expected HH:MM-HH:MM, got {value!r}") from None
    if start == time.max or not start < end:
        raise ValueError(f"the window must start before it ends, got {value!r}")
    return Window(start, end)


def parse_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in {"1", "true", "yes", "on"}:
        return True
    if isinstance(value, str) and value.strip().lower() in {"0", "false", "no", "off"}:
        return False
    raise ValueError(f"expected true or false, got {value!r}")


def _number(kind: type, minimum: float, maximum: float) -> Callable[[Any], Any]:
    def parse(value: Any) -> Any:
        if isinstance(value, bool):
            raise ValueError(f"expected a number, got {value!r}")
        try:
            number = kind(value.strip() if isinstance(value, str) else value)
        except (TypeError, ValueError):
            raise ValueError(
                f"expected {'an integer' if kind is int else 'a number'}, got {value!r}"
            ) from None
        if kind is int and isinstance(value, float) and value != int(value):
            raise ValueError(f"expected an integer, got {value!r}")
        if not minimum <= number <= maximum:
            raise ValueError(f"must be between {minimum:g} and {maximum:g}, got {number!r}")
        return number

    return parse


def parse_text(max_length: int = 200, allow_empty: bool = True) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        if not isinstance(value, str):
            raise ValueError(f"expected text, got {value!r}")
        value = value.strip()
        if not value and not allow_empty:
            raise ValueError("must not be empty")
        if len(value) > max_length:
            raise ValueError(f"must be at most {max_length} characters")
        return value

    return parse


_SLUG_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,39}$")


def parse_slug(value: Any) -> str:
    if not isinstance(value, str) or not _SLUG_RE.match(value.strip()):
        raise ValueError(
            f"expected lower-case letters, digits, '-' or '_' (at most 40), got {value!r}"
        )
    return value.strip()


def parse_timezone(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"expected a timezone name such as Europe/London, got {value!r}")
    try:
        ZoneInfo(value.strip())
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown timezone {value!r} (try Europe/London)") from None
    return value.strip()


def _choice(options: tuple[str, ...]) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        if not isinstance(value, str) or value.strip().lower() not in options:
            raise ValueError(f"expected one of {', '.join(options)}, got {value!r}")
        return value.strip().lower()

    return parse


def _string_list(value: Any) -> list[str]:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return [item.strip() for item in value]
    raise ValueError(f"expected a list of names, got {value!r}")


def parse_roles(value: Any) -> tuple[str, ...]:
    """Roles that may release a confiscated device: some of office, dsl and admin. A class
    teacher (``staff``) may confiscate, never release: the release is the office's, with
    the parent or carer's identity checked."""
    roles = [role.lower() for role in _string_list(value)]
    unknown = [role for role in roles if role not in ROLES]
    if unknown:
        raise ValueError(f"unknown role {unknown[0]!r}; roles are {', '.join(ROLES)}")
    if "staff" in roles:
        raise ValueError(
            "staff may confiscate but not release a device to a parent or carer; "
            f"choose from {', '.join(RELEASE_ROLES)}"
        )
    if not roles:
        raise ValueError("at least one role must be allowed")
    return tuple(dict.fromkeys(roles))


def parse_numbers(value: Any) -> tuple[int, ...]:
    """A list of compartment numbers: ``[21, 22]`` or ``"21-24, 30"``."""
    items: list[Any]
    if isinstance(value, str):
        items = [part.strip() for part in value.split(",") if part.strip()]
    elif isinstance(value, list):
        items = value
    else:
        raise ValueError(f"expected a list of compartment numbers, got {value!r}")
    numbers: list[int] = []
    for item in items:
        if isinstance(item, int) and not isinstance(item, bool):
            numbers.append(item)
        elif isinstance(item, str) and re.fullmatch(r"\d+", item):
            numbers.append(int(item))
        elif isinstance(item, str) and re.fullmatch(r"\d+\s*-\s*\d+", item):
            low, high = (int(part) for part in item.split("-"))
            if low > high:
                raise ValueError(f"range {item!r} runs backwards")
            numbers.extend(range(low, high + 1))
        else:
            raise ValueError(f"expected compartment numbers, got {item!r}")
    if any(number < 1 for number in numbers):
        raise ValueError("compartment numbers start at 1")
    return tuple(sorted(set(numbers)))


# --------------------------------------------------------------------------------------
# The schema.


@dataclass(frozen=True)
class Key:
    section: str
    name: str
    default: Any
    doc: str
    parse: Callable[[Any], Any]

    @property
    def env(self) -> str:
        return f"{ENV_PREFIX}{self.section.upper()}_{self.name.upper()}"


KEYS: tuple[Key, ...] = (
    Key(
        "site",
        "name",
        "Our School",
        "School name shown on pages and printed notices.",
        parse_text(120, allow_empty=False),
    ),
    Key(
        "database",
        "url",
        "",
        "SQLAlchemy URL of the database; empty means the SQLite file locker.db in the "
        "instance directory. PostgreSQL: postgresql+psycopg://user:pass@host/locker.",
        parse_text(500),
    ),
    Key(
        "database",
        "busy_timeout_ms",
        5000,
        "How long (milliseconds) a SQLite writer waits for another writer before giving up.",
        _number(int, 100, 120_000),
    ),
    Key(
        "policy",
        "timezone",
        "Europe/London",
        "The school's timezone; every window below is local time in it.",
        parse_timezone,
    ),
    Key(
        "policy",
        "deposit_window",
        "07:30-09:15",
        "When pupils may lock a device away at the kiosk (HH:MM-HH:MM).",
        parse_window,
    ),
    Key(
        "policy",
        "collection_window",
        "15:00-17:30",
        "When pupils may collect their device at the kiosk (HH:MM-HH:MM). Pupils with an "
        "exemption active that day may collect at any time.",
        parse_window,
    ),
    Key(
        "policy",
        "end_of_day",
        "18:00",
        "Cut-off: devices still in a locker after this time are flagged as uncollected.",
        parse_time_of_day,
    ),
    Key(
        "policy",
        "confiscation_release_from",
        "15:15",
        "Earliest time of day a device confiscated that day may be released to a parent or "
        "carer; devices confiscated on an earlier day may be released at any time.",
        parse_time_of_day,
    ),
    Key(
        "policy",
        "release_roles",
        ["office", "dsl", "admin"],
        "Roles that may release a confiscated device to a parent or carer.",
        parse_roles,
    ),
    Key(
        "policy",
        "retention_days",
        400,
        "Days to keep custody records and audit events; `locker retention purge` deletes "
        "older ones (never those of a device ever under safeguarding hold).",
        _number(int, 30, 36_500),
    ),
    Key(
        "policy",
        "kiosk_name_display",
        "first_name_initial",
        "How much of a pupil's name the kiosk screen shows: first_name_initial (Sam T.), "
        "first_name, initials (S. T.) or none.",
        _choice(NAME_DISPLAYS),
    ),
    Key(
        "kiosk",
        "name",
        "main",
        "This cabinet's id, unique in the school (lower-case letters, digits, - and _).",
        parse_slug,
    ),
    Key(
        "kiosk",
        "label",
        "Main cabinet",
        "A human name for the cabinet, e.g. 'Form 7A room'.",
        parse_text(120, allow_empty=False),
    ),
    Key(
        "kiosk", "compartments", 24, "Number of compartments in this cabinet.", _number(int, 1, 512)
    ),
    Key(
        "kiosk",
        "secure_compartments",
        [21, 22, 23, 24],
        "Compartment numbers reserved for confiscated devices (list, or text like '21-24').",
        parse_numbers,
    ),
    Key(
        "kiosk",
        "deposit_timeout_s",
        30,
        "Longest a deposit stays pending when nothing else settles it (a restart meanwhile). "
        "The door itself must open while the lock is energised ([hardware] unlock_s), or the "
        "deposit is cancelled then.",
        _number(float, 3, 600),
    ),
    Key(
        "kiosk",
        "door_open_alarm_s",
        60,
        "Seconds a door may stand open before the kiosk raises an alarm.",
        _number(float, 5, 3600),
    ),
    Key(
        "kiosk",
        "staff_mode_s",
        30,
        "Seconds staff mode lasts after a staff card is tapped.",
        _number(float, 5, 600),
    ),
    Key(
        "kiosk",
        "out_of_service_after",
        3,
        "Consecutive unlocks whose door never opened before a compartment is taken out of service.",
        _number(int, 1, 20),
    ),
    Key(
        "kiosk",
        "command_poll_s",
        0.2,
        "Seconds between checks of the commands table (the web asks the kiosk through it).",
        _number(float, 0.02, 5),
    ),
    Key(
        "kiosk",
        "heartbeat_s",
        10,
        "Seconds between heartbeats the kiosk writes for the office page.",
        _number(float, 1, 300),
    ),
    Key("web", "host", "127.0.0.1", "Address the web app listens on.", parse_text(100, False)),
    Key("web", "port", 8000, "Port the web app listens on.", _number(int, 1, 65535)),
    Key(
        "web",
        "secure_cookies",
        True,
        "Send session cookies only over HTTPS. Turn off only for a local demo over plain HTTP.",
        parse_bool,
    ),
    Key(
        "web",
        "login_attempts",
        5,
        "Failed logins in a row for one user name from one address before that address may "
        "not try it for a while (an address may fail 4x this over all names; a user name "
        "under attack from many addresses is slowed down, never locked out).",
        _number(int, 2, 100),
    ),
    Key(
        "web",
        "login_lockout_s",
        300,
        "Seconds logins stay refused after too many failures.",
        _number(int, 10, 86_400),
    ),
    Key(
        "web",
        "trusted_proxies",
        0,
        "Reverse proxies in front of the web app whose X-Forwarded-For is trusted (0: none; "
        "1 behind the nginx of docs/install.md).",
        _number(int, 0, 10),
    ),
)

SECTIONS: tuple[str, ...] = (*dict.fromkeys(key.section for key in KEYS), "hardware")
_KEYS_BY_SECTION: dict[str, dict[str, Key]] = {}
for _key in KEYS:
    _KEYS_BY_SECTION.setdefault(_key.section, {})[_key.name] = _key


# --------------------------------------------------------------------------------------
# The typed result.


@dataclass(frozen=True)
class SiteConfig:
    name: str


@dataclass(frozen=True)
class DatabaseConfig:
    url: str
    busy_timeout_ms: int


@dataclass(frozen=True)
class PolicyConfig:
    timezone: str
    deposit_window: Window
    collection_window: Window
    end_of_day: time
    confiscation_release_from: time
    release_roles: tuple[str, ...]
    retention_days: int
    kiosk_name_display: str

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)


@dataclass(frozen=True)
class KioskConfig:
    name: str
    label: str
    compartments: int
    secure_compartments: tuple[int, ...]
    deposit_timeout_s: float
    door_open_alarm_s: float
    staff_mode_s: float
    out_of_service_after: int
    command_poll_s: float
    heartbeat_s: float


@dataclass(frozen=True)
class WebConfig:
    host: str
    port: int
    secure_cookies: bool
    login_attempts: int
    login_lockout_s: int
    trusted_proxies: int


@dataclass(frozen=True)
class HardwareSchema:
    """What the hardware layer says about the ``[hardware]`` table, for :func:`load`.

    ``keys`` are the names the table accepts; ``check`` (optional) validates a whole table
    and raises a ValueError whose ``key`` attribute names the culprit as the hardware layer
    writes it (``[hardware].compartments``, ``[hardware].compartments.3.lock``).
    """

    keys: Collection[str]
    check: Callable[[Mapping[str, Any]], object] | None = None


@dataclass(frozen=True)
class Config:
    site: SiteConfig
    database: DatabaseConfig
    policy: PolicyConfig
    kiosk: KioskConfig
    web: WebConfig
    hardware: dict[str, Any] = field(default_factory=dict)
    home: Path | None = None
    #: Where each key of ``hardware`` came from: ``config.toml [hardware] NAME``,
    #: ``environment LOCKER_HARDWARE_NAME``, ``setting [hardware] NAME`` or ``default ...``.
    hardware_sources: dict[str, str] = field(default_factory=dict, compare=False)

    def hardware_source(self, key: str | None) -> str:
        """Where the ``[hardware]`` key named by a hardware error's ``key`` was set
        (``[hardware].compartments.3`` -> the source of ``compartments``), for messages."""
        name = hardware_key_name(key)
        if name is None:
            return "config.toml [hardware]"
        return self.hardware_sources.get(name, f"config.toml [hardware] {name}")

    def database_url(self) -> str:
        """The configured URL, or the SQLite file in the instance directory."""
        if self.database.url:
            return self.database.url
        if self.home is None:
            raise ConfigError("[database] url is empty and there is no instance directory")
        path = str((self.home / "locker.db").resolve())
        return URL.create("sqlite", database=path).render_as_string()  # escapes ? # %


_SECTION_TYPES = {
    "site": SiteConfig,
    "database": DatabaseConfig,
    "policy": PolicyConfig,
    "kiosk": KioskConfig,
    "web": WebConfig,
}


_HARDWARE_KEY_RE = re.compile(r"^(?:\[hardware\]\.?)?([A-Za-z0-9_]+)")


def hardware_key_name(key: str | None) -> str | None:
    """The top-level ``[hardware]`` name in a hardware error's key: ``compartments`` for
    ``[hardware].compartments.3.lock``; None when there is none."""
    match = _HARDWARE_KEY_RE.match(key or "")
    return match[1] if match else None


def _env_names(hardware_keys: Collection[str] | None) -> list[str]:
    names = [key.env for key in KEYS]
    names += [f"{ENV_PREFIX}HARDWARE_{name.upper()}" for name in hardware_keys or ()]
    return names + list(OTHER_VARIABLES)


def _unknown_variable(variable: str, hardware_keys: Collection[str] | None) -> ConfigError:
    close = difflib.get_close_matches(variable.upper(), _env_names(hardware_keys), n=1)
    hint = f"did you mean {close[0]}? " if close else ""
    return ConfigError(
        f"environment {variable}: not a setting; {hint}settings are LOCKER_<SECTION>_<KEY> "
        "(see `locker config reference`): correct the name or unset the variable"
    )


def defaults() -> dict[str, dict[str, Any]]:
    return {
        section: {name: key.default for name, key in keys.items()}
        for section, keys in _KEYS_BY_SECTION.items()
    }


def load(
    home: Path | None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    *,
    hardware: HardwareSchema | None = None,
) -> Config:
    """Load and validate the configuration of the instance directory ``home``.

    Layers, later wins: the defaults of :data:`KEYS`, ``home/config.toml`` if it exists,
    ``LOCKER_<SECTION>_<KEY>`` variables of ``env`` (default ``os.environ``), then
    ``overrides`` (used by ``locker demo`` and tests). Raises ConfigError naming the key
    and where it came from; a ``LOCKER_*`` variable that names no key (and is not one of
    :data:`OTHER_VARIABLES` or :data:`OTHER_PREFIXES`) is an error too. With ``hardware``,
    a ``LOCKER_HARDWARE_*`` variable must name a key of it, and a bad value of one is
    refused naming the variable.
    """
    env = os.environ if env is None else env
    raw: dict[str, dict[str, tuple[Any, str]]] = {
        section: {name: (value, "default") for name, value in values.items()}
        for section, values in defaults().items()
    }
    hardware_table: dict[str, Any] = {}
    sources: dict[str, str] = {}

    if home is not None:
        path = home / CONFIG_FILENAME
        if path.exists():
            file_values = _read_toml(path)
            for section, values in file_values.items():
                if section not in SECTIONS and not isinstance(values, dict):
                    raise ConfigError(
                        f"{path}: {section} = ... is outside any section; every key belongs "
                        f"to one ({', '.join(f'[{name}]' for name in SECTIONS)})"
                        + _section_hint(section)
                    )
                if section not in SECTIONS:
                    raise ConfigError(
                        f"{path}: unknown section [{section}]; sections are "
                        f"{', '.join(f'[{name}]' for name in SECTIONS)}"
                    )
                if not isinstance(values, dict):
                    raise ConfigError(f"{path}: {section} must be a table [{section}]")
                if section == "hardware":
                    hardware_table.update(values)
                    sources.update({name: f"{path} [hardware] {name}" for name in values})
                    continue
                for name, value in values.items():
                    if name not in _KEYS_BY_SECTION[section]:
                        raise ConfigError(
                            f"{path} [{section}] {name}: unknown key; keys of [{section}] are "
                            f"{', '.join(_KEYS_BY_SECTION[section])}"
                        )
                    raw[section][name] = (value, f"{path} [{section}] {name}")

    hardware_keys = None if hardware is None else set(hardware.keys)
    from_env: dict[str, str] = {}  # [hardware] name -> the variable that set it
    for variable, value in sorted(env.items()):
        if not variable.startswith(ENV_PREFIX) or _not_a_setting(variable):
            continue
        rest = variable[len(ENV_PREFIX) :].lower()
        section, _, name = rest.partition("_")
        if section == "hardware" and name and (hardware_keys is None or name in hardware_keys):
            hardware_table[name] = value
            sources[name] = from_env[name] = f"environment {variable}"
        elif section in _KEYS_BY_SECTION and name in _KEYS_BY_SECTION[section]:
            raw[section][name] = (value, f"environment {variable}")
        else:
            raise _unknown_variable(variable, hardware_keys)

    for section, values in (overrides or {}).items():
        for name, value in values.items():
            if section == "hardware":
                hardware_table[name] = value
                sources[name] = f"setting [hardware] {name}"
                from_env.pop(name, None)
            elif name in _KEYS_BY_SECTION.get(section, {}):
                raw[section][name] = (value, f"setting [{section}] {name}")
            else:
                raise ConfigError(f"unknown setting [{section}] {name}")

    parsed: dict[str, dict[str, Any]] = {}
    for section, values in raw.items():
        parsed[section] = {}
        for name, (value, source) in values.items():
            key = _KEYS_BY_SECTION[section][name]
            where = source if source != "default" else f"default [{section}] {name}"
            try:
                parsed[section][name] = key.parse(value)
            except ValueError as exc:
                raise ConfigError(f"{where}: {exc}") from None

    kiosk = parsed["kiosk"]
    beyond = [n for n in kiosk["secure_compartments"] if n > kiosk["compartments"]]
    if beyond:
        raise ConfigError(
            f"[kiosk] secure_compartments: compartment {beyond[0]} does not exist; the cabinet "
            f"has {kiosk['compartments']} (see [kiosk] compartments)"
        )
    if len(kiosk["secure_compartments"]) >= kiosk["compartments"]:
        raise ConfigError(
            "[kiosk] secure_compartments: every compartment is secure; leave some for pupils"
        )
    policy = parsed["policy"]
    if policy["end_of_day"] < policy["collection_window"].start:
        raise ConfigError(
            f"[policy] end_of_day ({policy['end_of_day']:%H:%M}) is before the collection "
            f"window opens ({policy['collection_window']})"
        )

    if "compartments" not in hardware_table:
        # The cabinet has [kiosk] compartments compartments; without a pin map of its own
        # they are laid out by the hardware layer's default layout.
        hardware_table["compartments"] = kiosk["compartments"]
        sources["compartments"] = HARDWARE_COMPARTMENTS_DEFAULT
    if from_env and hardware is not None and hardware.check is not None:
        _check_hardware_from_env(hardware_table, from_env, hardware.check)

    sections = {name: _SECTION_TYPES[name](**values) for name, values in parsed.items()}
    return Config(**sections, hardware=hardware_table, home=home, hardware_sources=sources)


HARDWARE_COMPARTMENTS_DEFAULT = "default [hardware] compartments (= [kiosk] compartments)"


def _check_hardware_from_env(
    table: Mapping[str, Any],
    from_env: Mapping[str, str],
    check: Callable[[Mapping[str, Any]], object],
) -> None:
    """Refuse a bad ``LOCKER_HARDWARE_*`` value naming the variable. A mistake elsewhere in
    the table is left to whoever opens the cabinet (the kiosk, ``locker config check``):
    the web process and most commands never need the cabinet."""
    try:
        check(table)
    except ValueError as exc:
        key = getattr(exc, "key", None)
        name = hardware_key_name(key)
        if name not in from_env:
            return
        message = str(exc)
        if key and message.startswith(key):
            message = from_env[name] + message[len(key) :]  # "environment LOCKER_... = 'x' is"
        else:
            message = f"{from_env[name]}: {message}"
        raise ConfigError(f"{message} (the variable sets [hardware] {name})") from None


def _section_hint(name: str) -> str:
    """``"; did you mean [database] url?"`` for a top-level ``database_url``, when some
    section's key matches the name with its section's prefix taken off."""
    for key in KEYS:
        if name in (f"{key.section}_{key.name}", key.name):
            return f"; did you mean [{key.section}] {key.name}?"
    return ""


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ConfigError(
            f"{path}: not UTF-8 text (byte 0x{data[exc.start]:02X} on line {line}): it must be "
            "a TOML text file saved as UTF-8; restore it from a backup or write a new one "
            "with `locker config example`"
        ) from None
    try:
        return tomllib.loads(text.removeprefix("\ufeff"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def _hardware_documented(
    hardware_keys: list[tuple[str, str, str]] | None,
) -> list[tuple[str, str, str, str]]:
    """The documented [hardware] keys as (name, default as TOML text, default as shown in
    the reference, doc), with the default :func:`load` gives ``compartments``."""
    keys = []
    for name, default, doc in hardware_keys or []:
        shown = default
        if name == "compartments":
            default = _toml_value(_KEYS_BY_SECTION["kiosk"]["compartments"].default)
            shown = "[kiosk] compartments"
            doc = (
                f"{doc} Default: the number of [kiosk] compartments, in the default layout "
                "(write the pin map out for more than six; see docs/hardware.md)."
            )
        keys.append((name, default, shown, doc))
    return keys


def example(
    values: Mapping[str, Mapping[str, Any]] | None = None,
    hardware_keys: list[tuple[str, str, str]] | None = None,
) -> str:
    """A commented config.toml documenting every key with its default.

    Keys given in ``values`` are written uncommented with that value; the others stay
    commented so that a later default change reaches the school.
    """
    values = values or {}
    lines = [
        "# Phone locker configuration. Every key is shown with its default; uncomment to change.",
        "# Environment variables LOCKER_<SECTION>_<KEY> override this file.",
    ]
    for section in SECTIONS:
        lines += ["", f"[{section}]"]
        if section == "hardware":
            keys = _hardware_documented(hardware_keys)
            if not keys:
                lines.append("# See the hardware documentation in the README.")
            for name, default, _shown, doc in keys:  # defaults come as TOML text
                lines.append(f"# {doc}")
                if name in values.get(section, {}):
                    lines.append(f"{name} = {_toml_value(values[section][name])}")
                else:
                    lines.append(f"# {name} = {default}")
            continue
        for name, key in _KEYS_BY_SECTION[section].items():
            lines.append(f"# {key.doc}")
            if name in values.get(section, {}):
                lines.append(f"{name} = {_toml_value(values[section][name])}")
            else:
                lines.append(f"# {name} = {_toml_value(key.default)}")
    return "\n".join(lines) + "\n"


def reference(hardware_keys: list[tuple[str, str, str]] | None = None) -> str:
    """Every key as a Markdown reference (``docs/configuration.md`` is this; a test keeps it
    in step)."""

    def cell(text: str) -> str:
        return text.replace("|", "\\|")

    lines = [
        "# Configuration reference",
        "",
        "Generated by `locker config reference`; do not edit by hand.",
        "",
        "Settings are read from the defaults below, then `config.toml` in the instance "
        "directory (`--home`, `$LOCKER_HOME`, `./instance`; on a Pi `/etc/locker/config.toml` "
        "is linked there), then environment variables `LOCKER_<SECTION>_<KEY>`. A bad value "
        "stops the program with a message naming the key and where it came from; so does a "
        "`LOCKER_*` variable that names no key, except these, which are not settings:",
        "",
        *(f"- `{name}`: {purpose}" for name, purpose in OTHER_VARIABLES.items()),
        *(f"- `{prefix}*`: {purpose}" for prefix, purpose in OTHER_PREFIXES.items()),
    ]
    for section in SECTIONS:
        lines += ["", f"## [{section}]", "", "| key | default | meaning |", "|---|---|---|"]
        if section == "hardware":
            for name, _default, shown, doc in _hardware_documented(hardware_keys):
                lines.append(f"| `{name}` | `{cell(shown)}` | {cell(doc)} |")
            continue
        for name, key in _KEYS_BY_SECTION[section].items():
            lines.append(f"| `{name}` | `{cell(_toml_value(key.default))}` | {cell(key.doc)} |")
    return "\n".join(lines) + "\n"
