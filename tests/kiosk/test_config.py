"""Configuration: defaults -> config.toml -> LOCKER_* environment, every bad value named."""

from __future__ import annotations

import re
import tomllib
from datetime import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kiosk import config
from kiosk.config import (
    KEYS,
    OTHER_PREFIXES,
    OTHER_VARIABLES,
    HardwareSchema,
    Window,
    load,
    parse_window,
)
from kiosk.errors import ConfigError


def write(home: Path, text: str) -> Path:
    home.mkdir(exist_ok=True)
    (home / "config.toml").write_text(text, encoding="utf-8")
    return home


def test_defaults_without_a_file(tmp_path):
    loaded = load(tmp_path, env={})
    assert loaded.policy.timezone == "Europe/London"
    assert loaded.policy.deposit_window == Window(time(7, 30), time(9, 15))
    assert loaded.policy.release_roles == ("office", "dsl", "admin")
    assert loaded.kiosk.secure_compartments == (21, 22, 23, 24)
    assert loaded.database_url() == f"sqlite:///{tmp_path / 'locker.db'}"


def test_file_then_environment_then_overrides(tmp_path):
    write(
        tmp_path,
        '[policy]\ndeposit_window = "08:00-08:45"\nretention_days = 100\n'
        '[kiosk]\ncompartments = 10\nsecure_compartments = "9-10"\n',
    )
    loaded = load(
        tmp_path, env={"LOCKER_POLICY_RETENTION_DAYS": "200", "LOCKER_WEB_SECURE_COOKIES": "false"}
    )
    assert str(loaded.policy.deposit_window) == "08:00-08:45"
    assert loaded.policy.retention_days == 200
    assert loaded.kiosk.secure_compartments == (9, 10)
    assert loaded.web.secure_cookies is False
    again = load(
        tmp_path,
        env={"LOCKER_POLICY_RETENTION_DAYS": "200"},
        overrides={"policy": {"retention_days": 300}},
    )
    assert again.policy.retention_days == 300


@pytest.mark.parametrize(
    ("text", "env", "message"),
    [
        (
            '[policy]\ndeposit_window = "7.30-9"\n',
            {},
            r"config.toml \[policy\] deposit_window: expected HH:MM-HH:MM",
        ),
        ('[policy]\ndeposit_window = "09:00-08:00"\n', {}, "must start before it ends"),
        ('[policy]\ntimezone = "Mars/Olympus"\n', {}, r"\[policy\] timezone: unknown timezone"),
        ('[policy]\nrelease_roles = ["office", "caretaker"]\n', {}, "unknown role 'caretaker'"),
        (
            '[policy]\nrelease_roles = ["office", "staff"]\n',
            {},
            "release_roles: staff may confiscate but not release",
        ),
        (
            'database_url = "postgresql+psycopg://db/locker"\n',
            {},
            r"database_url = \.\.\. is outside any section.*did you mean \[database\] url\?",
        ),
        ("[policy]\nretention_days = 5\n", {}, "retention_days: must be between 30"),
        ('[kiosk]\ncompartments = "many"\n', {}, r"\[kiosk\] compartments: expected an integer"),
        ('[kiosk]\nname = "Main Hall"\n', {}, r"\[kiosk\] name: expected lower-case"),
        ("[kiosk]\ncompartments = 4\n", {}, "compartment 21 does not exist"),
        ('[polcy]\ntimezone = "Europe/London"\n', {}, r"unknown section \[polcy\]"),
        ('[policy]\ndeposit_windw = "08:00-09:00"\n', {}, "deposit_windw: unknown key"),
        ("[policy\n", {}, "not valid TOML"),
        (
            "",
            {"LOCKER_KIOSK_DEPOSIT_TIMEOUT_S": "soon"},
            "environment LOCKER_KIOSK_DEPOSIT_TIMEOUT_S: expected a number",
        ),
        (
            "",
            {"LOCKER_WEB_SECURE_COOKIES": "perhaps"},
            "LOCKER_WEB_SECURE_COOKIES: expected true or false",
        ),
        ('[policy]\nend_of_day = "12:00"\n', {}, "end_of_day .* is before the collection"),
    ],
)
def test_bad_values_name_the_key_and_where_it_came_from(tmp_path, text, env, message):
    write(tmp_path, text)
    with pytest.raises(ConfigError, match=message):
        load(tmp_path, env=env)


def test_the_example_documents_every_key_and_loads_to_the_defaults(tmp_path):
    text = config.example()
    for key in KEYS:
        assert f"# {key.name} = " in text, key.name
        assert key.doc in text
    parsed = tomllib.loads(text)
    assert set(parsed) == set(config.SECTIONS)
    write(tmp_path, text)
    assert load(tmp_path, env={}) == load(None, env={}).__class__(
        **{**load(None, env={}).__dict__, "home": tmp_path}
    )


def test_the_example_writes_given_values_uncommented(tmp_path):
    text = config.example({"kiosk": {"name": "form-7a"}})
    write(tmp_path, text)
    assert load(tmp_path, env={}).kiosk.name == "form-7a"


REPO = Path(__file__).parents[2]


def _variables_the_deployment_sets() -> set[str]:
    """Every LOCKER_* variable the systemd units, the env files and the install scripts set
    or read: the environment `locker` may find itself in."""
    names: set[str] = set()
    for path in [*REPO.glob("systemd/*"), *REPO.glob("install/*")]:
        names.update(re.findall(r"\b(LOCKER_[A-Z0-9_]+)=", path.read_text(encoding="utf-8")))
        names.update(re.findall(r"\$\{(LOCKER_[A-Z0-9_]+)[:}]", path.read_text(encoding="utf-8")))
    return names


# Shell variables of install/install-pi.sh (never exported, so `locker` never sees them).
SCRIPT_ONLY = {"LOCKER_UID", "LOCKER_GID"}


def test_the_deployments_variables_are_allowed(tmp_path):
    deployment = _variables_the_deployment_sets() - SCRIPT_ONLY
    assert {"LOCKER_HOME", "LOCKER_BACKUP_DIR", "LOCKER_BACKUP_KEEP", "LOCKER_BIN"} <= deployment
    others = deployment - {key.env for key in KEYS}
    assert {name for name in others if not name.startswith(tuple(OTHER_PREFIXES))} <= set(
        OTHER_VARIABLES
    )
    loaded = load(tmp_path, env=dict.fromkeys(others, "1") | {"PATH": "/bin", "locker_x": "1"})
    assert loaded.site.name == "Our School"


@pytest.mark.parametrize(
    ("variable", "hint"),
    [
        ("LOCKER_POLICY_RETENTION_DAYZ", "did you mean LOCKER_POLICY_RETENTION_DAYS?"),
        ("LOCKER_POLCY_TIMEZONE", "did you mean LOCKER_POLICY_TIMEZONE?"),
        ("LOCKER_KIOSK_NAMES", "did you mean LOCKER_KIOSK_NAME?"),
        ("LOCKER_NOT_A_KEY", ""),
        ("LOCKER_", ""),
        ("LOCKER_POLICY", ""),
    ],
)
def test_an_unknown_locker_variable_is_an_error_naming_it(tmp_path, variable, hint):
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, env={variable: "45"})
    message = str(caught.value)
    assert message.startswith(f"environment {variable}: not a setting")
    assert hint in message
    assert "config.toml" not in message


HARDWARE = HardwareSchema(keys=("backend", "compartments", "max_unlock_s"))


def test_hardware_variables_must_name_a_hardware_key_when_the_keys_are_known(tmp_path):
    loaded = load(tmp_path, env={"LOCKER_HARDWARE_BACKND": "sim"})  # the web: keys unknown
    assert loaded.hardware["backnd"] == "sim"
    with pytest.raises(ConfigError, match="LOCKER_HARDWARE_BACKND: not a setting; did you mean"):
        load(tmp_path, env={"LOCKER_HARDWARE_BACKND": "sim"}, hardware=HARDWARE)


def test_a_bad_hardware_variable_is_blamed_on_the_variable(tmp_path):
    from hardware.spec import DOCUMENTED_KEYS, CabinetSpec

    schema = HardwareSchema(
        keys=[key.name for key in DOCUMENTED_KEYS], check=CabinetSpec.from_mapping
    )
    write(tmp_path, '[hardware]\nbackend = "sim"\n')
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, env={"LOCKER_HARDWARE_COMPARTMENTS": "abc"}, hardware=schema)
    message = str(caught.value)
    assert message.startswith("environment LOCKER_HARDWARE_COMPARTMENTS = 'abc'")
    assert "config.toml" not in message
    with pytest.raises(ConfigError, match="environment LOCKER_HARDWARE_MAX_UNLOCK_S"):
        load(tmp_path, env={"LOCKER_HARDWARE_MAX_UNLOCK_S": "forever"}, hardware=schema)
    # A mistake in the file is left for whoever opens the cabinet: most commands need none.
    write(tmp_path, '[hardware]\nbackend = "sim"\nmax_unlock_s = "forever"\n')
    loaded = load(tmp_path, env={"LOCKER_HARDWARE_BACKEND": "sim"}, hardware=schema)
    assert loaded.hardware_source("max_unlock_s").endswith("config.toml [hardware] max_unlock_s")
    assert loaded.hardware_source("backend") == "environment LOCKER_HARDWARE_BACKEND"


ENV_NAME = st.one_of(
    st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZ_0123456789", max_size=30),
    st.sampled_from(["BACKUP_", "SCREEN_", "HOME", "BIN", "HARDWARE_"]).flatmap(
        lambda start: st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZ_", max_size=10).map(start.__add__)
    ),
)


@given(st.one_of(ENV_NAME, st.sampled_from([key.env[len("LOCKER_") :] for key in KEYS])))
def test_every_locker_variable_is_a_setting_another_use_or_an_error(suffix):
    variable = "LOCKER_" + suffix
    try:
        load(None, env={variable: "Europe/London"}, hardware=HARDWARE)
    except ConfigError as exc:
        assert str(exc).startswith(f"environment {variable}")
    else:
        known = {key.env for key in KEYS} | set(OTHER_VARIABLES)
        known |= {f"LOCKER_HARDWARE_{name.upper()}" for name in HARDWARE.keys}
        assert variable in known or variable.startswith(tuple(OTHER_PREFIXES))


def test_hardware_table_is_passed_through_with_environment_overrides(tmp_path):
    write(tmp_path, '[hardware]\nbackend = "gpio"\nmax_unlock_s = 3\n')
    loaded = load(tmp_path, env={"LOCKER_HARDWARE_BACKEND": "sim"})
    assert loaded.hardware == {"backend": "sim", "max_unlock_s": 3, "compartments": 24}


def test_hardware_compartments_default_to_the_kiosk_compartments(tmp_path):
    """A freshly written config.toml describes no pin map: the cabinet then has [kiosk]
    compartments compartments in the default layout (it used to be refused as missing)."""
    from kiosk.daemon import cabinet_spec

    write(tmp_path, "[kiosk]\ncompartments = 6\nsecure_compartments = [6]\n")
    loaded = load(tmp_path, env={})
    assert loaded.hardware["compartments"] == 6
    assert loaded.hardware_source("compartments") == config.HARDWARE_COMPARTMENTS_DEFAULT
    spec = cabinet_spec(loaded)
    assert (spec.backend, sorted(spec.compartments)) == ("gpio", [1, 2, 3, 4, 5, 6])
    write(tmp_path, "[hardware]\ncompartments = 24\n")
    assert load(tmp_path, env={}).hardware_source("compartments").endswith("compartments")


def test_every_commented_default_of_the_example_is_valid_when_uncommented(tmp_path):
    """`locker config example` (what `locker init` writes) loads as it is, and with every
    `# key = default` line uncommented it still loads, to the same settings, and its cabinet
    checks out."""
    from kiosk.cli import _hardware_keys
    from kiosk.daemon import cabinet_spec

    text = config.example(hardware_keys=_hardware_keys())
    write(tmp_path, text)
    as_written = load(tmp_path, env={})
    cabinet_spec(as_written)
    uncommented = re.sub(r"^# (\w+ = )", r"\1", text, flags=re.MULTILINE)
    assert "\ncompartments = 24\n" in uncommented and "(required)" not in uncommented
    write(tmp_path, uncommented)
    loaded = load(tmp_path, env={})
    assert (loaded.policy, loaded.kiosk, loaded.web) == (
        as_written.policy,
        as_written.kiosk,
        as_written.web,
    )
    assert len(cabinet_spec(loaded).compartments) == loaded.kiosk.compartments


def test_a_config_toml_that_is_not_utf8_names_the_file(tmp_path):
    tmp_path.mkdir(exist_ok=True)
    path = tmp_path / "config.toml"
    path.write_bytes(b'[site]\nname = "Caf\xe9 School"\n')
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, env={})
    message = str(caught.value)
    assert message.startswith(f"{path}: not UTF-8 text") and "line 2" in message
    path.write_bytes(b'\xef\xbb\xbf[site]\nname = "Caf\xc3\xa9 School"\n')  # BOM: fine
    assert load(tmp_path, env={}).site.name == "Café School"


times = st.builds(time, st.integers(0, 23), st.integers(0, 59))


@given(start=times, end=times)
def test_windows_round_trip_and_contain_their_start(start, end):
    text = f"{start:%H:%M}-{end:%H:%M}"
    if start >= end:
        with pytest.raises(ValueError):
            parse_window(text)
        return
    window = parse_window(text)
    assert str(window) == text
    assert window.contains(start) and not window.contains(end)


@given(st.text(max_size=20))
def test_window_parser_never_crashes(text):
    try:
        parse_window(text)
    except ValueError as exc:
        assert "HH:MM" in str(exc) or "start before" in str(exc)


def test_window_to_midnight_includes_the_last_minute():
    window = parse_window("00:00-24:00")
    assert window.contains(time(23, 59, 59)) and window.contains(time(0, 0))


def test_the_configuration_reference_in_docs_is_up_to_date():
    """docs/configuration.md is generated (`locker config reference > docs/configuration.md`)."""
    from hardware.spec import DOCUMENTED_KEYS

    keys = [(key.name, key.default, key.doc) for key in DOCUMENTED_KEYS]
    path = Path(__file__).parents[2] / "docs" / "configuration.md"
    assert path.read_text(encoding="utf-8") == config.reference(keys), (
        "regenerate it: locker config reference > docs/configuration.md"
    )
    for key in KEYS:
        assert f"| `{key.name}` |" in path.read_text(encoding="utf-8")
