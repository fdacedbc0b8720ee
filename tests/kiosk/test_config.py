"""Configuration: defaults -> config.toml -> LOCKER_* environment, every bad value named."""

from __future__ import annotations

import tomllib
from datetime import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kiosk import config
from kiosk.config import KEYS, Window, load, parse_window
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


def test_unrelated_environment_variables_are_ignored(tmp_path):
    loaded = load(tmp_path, env={"LOCKER_HOME": "/x", "LOCKER_NOT_A_KEY": "1", "PATH": "/bin"})
    assert loaded.site.name == "Our School"


def test_hardware_table_is_passed_through_with_environment_overrides(tmp_path):
    write(tmp_path, '[hardware]\nbackend = "gpio"\nmax_unlock_s = 3\n')
    loaded = load(tmp_path, env={"LOCKER_HARDWARE_BACKEND": "sim"})
    assert loaded.hardware == {"backend": "sim", "max_unlock_s": 3}


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
