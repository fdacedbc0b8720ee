"""The ``locker`` command line.

Every command works on the instance directory named by ``--home`` or ``LOCKER_HOME``
(default ``./instance``). A mistake (a bad file, an unknown card, a weak password) ends with
a one-line message on stderr and a non-zero exit status, never a traceback; ``--debug``
shows the traceback of an unexpected failure. Logging is configured here, once, to stderr
(journald picks it up under systemd).

Errors become messages in one place: the ``locker`` group's :meth:`LockerGroup.invoke`
turns what a user's mistake or a damaged instance raises from below (an output file in a
directory that does not exist, a database that is not one, a schema newer than this
software) into a :class:`~kiosk.errors.LockerError`, and :func:`main` prints every
LockerError on one line with its exit status.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import sys
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any, NoReturn

import click
from sqlalchemy import select
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from kiosk import backup as backup_module
from kiosk import (
    cabinets,
    cards,
    config_changes,
    demo,
    exemptions,
    migrate,
    reports,
    retention,
    roster,
    users,
)
from kiosk import config as config_module
from kiosk.actors import Actor
from kiosk.clock import Clock, SystemClock
from kiosk.errors import ConfigError, ImportRejected, LockerError, ValidationError
from kiosk.export import export_pupil
from kiosk.instance import Instance, resolve_home
from kiosk.models import CustodyRecord, CustodyState, Role
from kiosk.pupils import find_by_admission

log = logging.getLogger(__name__)

EX_USAGE = 2
EX_DATAERR = 65  # the database file is damaged
EX_SOFTWARE = 70
EX_IOERR = 74  # a file named on the command line (or the instance) cannot be used
EX_TEMPFAIL = 75  # systemd restarts the kiosk: the server may be back by then
PROGRESS_THRESHOLD = 200


@dataclass
class CliState:
    home: str | None
    debug: bool
    clock: Clock = field(default_factory=SystemClock)
    _instance: Instance | None = None

    def instance(self) -> Instance:
        """The opened instance, its schema checked (``locker init`` upgrades it)."""
        if self._instance is None:
            instance = self.open_instance()
            migrate.ensure_current(instance.database)
        assert self._instance is not None
        return self._instance

    def open_instance(self) -> Instance:
        """The instance, opened without looking at the database (closed with the command)."""
        if self._instance is None:
            self._instance = Instance.open(self.home, hardware=_hardware_schema())
        return self._instance

    @property
    def actor(self) -> Actor:
        return Actor.system("cli")


pass_state = click.make_pass_decorator(CliState)


class LockerGroup(click.Group):
    """The ``locker`` group: what a command raises from below is translated here, once."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except Exception as exc:
            translated = translate_error(exc, ctx.obj if isinstance(ctx.obj, CliState) else None)
            if translated is None:
                raise
            log.debug("%s", translated, exc_info=True)  # the original traceback, with -vv
            raise translated from exc


class _Translated(LockerError):
    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


# SQLite's primary result codes for a file that is not a database, or a damaged one.
_SQLITE_NOTADB, _SQLITE_CORRUPT = 26, 11


def translate_error(exc: BaseException, state: CliState | None) -> LockerError | None:
    """A one-line LockerError for what a command raised from below, or None to leave it
    (to :func:`main`: usage errors, a database server out of reach, a bug)."""
    if isinstance(exc, LockerError | click.ClickException | click.exceptions.Exit):
        return None
    if isinstance(exc, DBAPIError) and isinstance(exc.orig, sqlite3.DatabaseError):
        code = getattr(exc.orig, "sqlite_errorcode", None)
        if code is not None and code & 0xFF in (_SQLITE_NOTADB, _SQLITE_CORRUPT):
            return _Translated(
                f"the database {_database_path(state)} is damaged or is not a phone locker "
                f"database ({exc.orig}): restore it from the latest backup "
                "(docs/operations.md, Restoring); keep the damaged file aside, do not delete it",
                EX_DATAERR,
            )
        return None
    if isinstance(exc, OSError):
        return _Translated(describe_os_error(exc), EX_IOERR)
    return None


def _database_path(state: CliState | None) -> str:
    instance = state._instance if state is not None else None
    if instance is not None:
        return str(instance.sqlite_path or instance.database.safe_url)
    return str(resolve_home(state.home if state is not None else None) / "locker.db")


def describe_os_error(exc: OSError) -> str:
    """What went wrong with a file, and what to do: one line."""
    reason = (exc.strerror or str(exc) or type(exc).__name__).rstrip(".")
    if exc.filename is None:
        return f"cannot read or write a file: {reason}"
    path = Path(os.fsdecode(exc.filename))
    if isinstance(exc, FileNotFoundError):
        if not path.parent.is_dir():
            missing = next(
                (p for p in reversed([path.parent, *path.parent.parents]) if not p.exists()),
                path.parent,
            )
            return (
                f"cannot use {path}: the directory {missing} does not exist; create it or "
                "choose another place"
            )
        return f"{path} does not exist"
    if isinstance(exc, IsADirectoryError):
        return f"{path} is a directory: give a file name"
    if isinstance(exc, NotADirectoryError):
        blocker = next((p for p in [*path.parents][::-1] if p.exists() and not p.is_dir()), None)
        where = f"{blocker} is a file, not a directory" if blocker else "not a directory"
        return f"cannot use {path}: {where}"
    if isinstance(exc, PermissionError):
        return (
            f"cannot use {path}: permission denied; choose a place you may write to (or "
            "run the command as the user that owns it)"
        )
    return f"cannot use {path}: {reason}"


def configure_logging(verbose: int) -> None:
    level = logging.DEBUG if verbose > 1 else logging.INFO if verbose else logging.WARNING
    logging.basicConfig(
        stream=sys.stderr,
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        force=True,
    )


@click.group(
    cls=LockerGroup,
    context_settings={"help_option_names": ["-h", "--help"]},
    no_args_is_help=True,
)
@click.option(
    "--home",
    metavar="DIR",
    help="Instance directory (config.toml, database, secret). Default: $LOCKER_HOME or ./instance.",
)
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.option("--debug", is_flag=True, help="Show tracebacks of unexpected errors.")
@click.version_option(package_name="school-phone-locker", prog_name="locker")
@click.pass_context
def cli(ctx: click.Context, home: str | None, verbose: int, debug: bool) -> None:
    """The school phone locker: custody ledger, kiosk and office dashboard."""
    configure_logging(verbose)
    ctx.obj = CliState(home=home, debug=debug)
    ctx.call_on_close(lambda: ctx.obj._instance and ctx.obj._instance.close())


def _hardware_keys() -> list[tuple[str, str, str]]:
    """The documented [hardware] keys (name, default as TOML text, doc); no hardware is
    touched."""
    from hardware.spec import DOCUMENTED_KEYS

    return [(key.name, key.default, key.doc) for key in DOCUMENTED_KEYS]


def _hardware_schema() -> config_module.HardwareSchema:
    """The [hardware] keys and their validation (pure Python: no hardware is touched), so a
    bad LOCKER_HARDWARE_* variable is refused naming the variable. (The web process loads
    the configuration without it: it never imports the hardware layer.)"""
    from hardware.spec import DOCUMENTED_KEYS, CabinetSpec

    return config_module.HardwareSchema(
        keys=[key.name for key in DOCUMENTED_KEYS], check=CabinetSpec.from_mapping
    )


# ------------------------------------------------------------------------------ init


@cli.command()
@click.option("--demo", "with_demo", is_flag=True, help="Seed a demo school (empty instance).")
@pass_state
def init(state: CliState, with_demo: bool) -> None:
    """Create or upgrade the instance: directory, secret, config, database schema."""
    instance, created = Instance.create(
        state.home, hardware_keys=_hardware_keys(), hardware=_hardware_schema()
    )
    state._instance = instance
    for item in created:
        click.echo(item if item.startswith("made ") else f"created {item}")
    migrate.refuse_newer_schema(instance.database)
    if migrate.current_revision(instance.database) is not None:
        with instance.database.reader() as session:  # a shared database: the same secret?
            instance.audit.check_key(session)
    before, after = migrate.upgrade(instance.database)
    if before != after:
        click.echo(f"database {instance.database.safe_url}: schema {before or 'new'} -> {after}")
    else:
        click.echo(f"database {instance.database.safe_url}: schema up to date ({after})")
    with instance.database.transaction() as session:
        if before != after:  # recorded (and the audit head sealed) like any other change
            instance.audit.record(
                session,
                state.clock,
                state.actor,
                "database.created" if before is None else "database.upgraded",
                details={"from": before, "to": after},
            )
        _, changes = cabinets.register(
            session, state.actor, state.clock, instance.audit, instance.config.kiosk
        )
        config_changes.record_changes(
            session, instance.audit, state.clock, instance.config, process="init"
        )
    kiosk = instance.config.kiosk
    if changes:
        click.echo(
            f"kiosk {kiosk.name}: {kiosk.compartments} compartments "
            f"({len(kiosk.secure_compartments)} secure); {len(changes)} change(s)"
        )
    if with_demo:
        with instance.database.transaction() as session:
            accounts = demo.seed(
                session, state.actor, state.clock, instance.audit, instance.card_key
            )
        if accounts is None:
            click.echo("demo: the instance already has pupils; nothing seeded")
        else:
            click.echo(f"demo school seeded: {len(demo.FORMS) * demo.PUPILS_PER_FORM} pupils")
            _print_accounts(accounts)


# ------------------------------------------------------------------------------ config


@cli.group("config")
def config_group() -> None:
    """Show or check the configuration."""


@config_group.command("example")
def config_example() -> None:
    """Print a config.toml documenting every key with its default."""
    click.echo(config_module.example(hardware_keys=_hardware_keys()), nl=False)


@config_group.command("reference")
def config_reference() -> None:
    """Print the Markdown reference of every key (docs/configuration.md)."""
    click.echo(config_module.reference(_hardware_keys()), nl=False)


@config_group.command("check")
@click.option(
    "--require-cabinet",
    is_flag=True,
    help="Also fail (exit 78) unless [hardware] compartments describes the cabinet (a pin "
    "map, or a count for the default layout): the installer starts the kiosk only then.",
)
@pass_state
def config_check(state: CliState, require_cabinet: bool) -> None:
    """Load and validate the configuration (exit 78 naming the bad key)."""
    from kiosk.daemon import cabinet_spec

    instance = state.instance()
    spec = cabinet_spec(instance.config)
    source = instance.config.hardware_source("compartments")
    layout = ""
    if source == config_module.HARDWARE_COMPARTMENTS_DEFAULT and spec.backend != "sim":
        if require_cabinet:
            raise ConfigError(
                f"{instance.home / config_module.CONFIG_FILENAME}: the cabinet is not described "
                "yet: set [hardware] compartments, to each compartment's lock and door pins or "
                "to a count for the default layout (docs/hardware.md)"
            )
        layout = ", the default layout: no [hardware] compartments pin map (docs/hardware.md)"
    click.echo(
        f"{instance.home / config_module.CONFIG_FILENAME}: ok "
        f"({len(spec.compartments)} compartments, {spec.backend} hardware{layout})"
    )


# ------------------------------------------------------------------------------ roster


@cli.group("roster")
def roster_group() -> None:
    """Pupils from the school's MIS."""


@roster_group.command("import")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--partial",
    is_flag=True,
    help="Add and update only; do not mark pupils missing from the file as left.",
)
@click.option(
    "--allow-mass-leave",
    is_flag=True,
    help="Allow a full import to mark more than a quarter of the school as left.",
)
@click.option("--dry-run", is_flag=True, help="Check the file and report; change nothing.")
@pass_state
def roster_import(
    state: CliState, file: Path, partial: bool, allow_mass_leave: bool, dry_run: bool
) -> None:
    """Import pupils from a CSV export (all-or-nothing)."""
    try:
        data = file.read_bytes()
    except OSError as exc:
        raise ValidationError(f"cannot read {file}: {exc.strerror}") from None
    parsed = roster.parse_roster(data)
    instance = state.instance()
    show_bar = sys.stderr.isatty() and len(parsed.rows) >= PROGRESS_THRESHOLD
    with instance.database.transaction() as session:
        if show_bar:
            with click.progressbar(
                length=len(parsed.rows), label="importing", file=sys.stderr
            ) as bar:
                last = 0

                def advance(done: int) -> None:
                    nonlocal last
                    bar.update(done - last)
                    last = done

                summary = roster.import_roster(
                    session,
                    state.actor,
                    state.clock,
                    instance.audit,
                    parsed,
                    full=not partial,
                    allow_mass_leave=allow_mass_leave,
                    progress=advance,
                )
        else:
            summary = roster.import_roster(
                session,
                state.actor,
                state.clock,
                instance.audit,
                parsed,
                full=not partial,
                allow_mass_leave=allow_mass_leave,
            )
        if dry_run:
            session.rollback()
    prefix = "dry run, nothing changed: " if dry_run else "imported: "
    click.echo(prefix + summary.describe())
    if summary.ignored_columns:
        click.echo(f"ignored columns (not stored): {', '.join(summary.ignored_columns)}")
    for line in summary.warnings():
        click.echo(line)


# ------------------------------------------------------------------------------ cards


@cli.group("card")
def card_group() -> None:
    """RFID cards of pupils and staff."""


@card_group.command("enrol")
@click.argument("holder", metavar="ADMISSION_NO")
@click.argument("uid")
@click.option("--staff", is_flag=True, help="HOLDER is a staff user name, not a pupil.")
@pass_state
def card_enrol(state: CliState, holder: str, uid: str, staff: bool) -> None:
    """Give card UID to a pupil (or, with --staff, to a member of staff)."""
    uid_bytes = cards.normalise_uid(uid)
    instance = state.instance()
    with instance.database.transaction() as session:
        pupil, user = None, None
        if staff:
            user = users.find_user(session, holder)
        else:
            pupil = find_by_admission(session, holder)
        cards.enrol(
            session,
            state.actor,
            state.clock,
            instance.audit,
            instance.card_key,
            uid=uid_bytes,
            pupil=pupil,
            user=user,
        )
    who = f"staff member {holder}" if staff else f"pupil {holder}"
    click.echo(f"card {cards.format_uid(uid_bytes)} enrolled to {who}")


@card_group.command("revoke")
@click.argument("uid")
@pass_state
def card_revoke(state: CliState, uid: str) -> None:
    """Revoke card UID (lost, damaged, or moving to someone else)."""
    uid_bytes = cards.normalise_uid(uid)
    instance = state.instance()
    with instance.database.transaction() as session:
        cards.revoke(
            session, state.actor, state.clock, instance.audit, instance.card_key, uid=uid_bytes
        )
    click.echo(f"card {cards.format_uid(uid_bytes)} revoked")


# ------------------------------------------------------------------------------ users


@cli.group("user")
def user_group() -> None:
    """Staff accounts."""


@user_group.command("add")
@click.argument("username")
@click.option("--role", required=True, metavar="ROLE", help="staff, office, dsl or admin.")
@click.option("--name", "display_name", help="Display name, e.g. 'Ms K. Lovell'.")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
@pass_state
def user_add(
    state: CliState, username: str, role: str, display_name: str | None, password_stdin: bool
) -> None:
    """Add a member of staff. Without --password-stdin a password is asked for (or, with no
    terminal, generated and printed once)."""
    parsed_role = users.parse_role(role)
    username = users.check_username(username)
    site_name = state.open_instance().config.site.name
    password, generated = _new_password(username, password_stdin, site_name)
    instance = state.instance()
    with instance.database.transaction() as session:
        users.add_user(
            session,
            state.actor,
            state.clock,
            instance.audit,
            username=username,
            role=parsed_role,
            password=password,
            display_name=display_name,
            site_name=site_name,
        )
    click.echo(f"user {username} added ({parsed_role.value})")
    if generated:
        click.echo(f"password (shown only now): {password}")


@user_group.command("password")
@click.argument("username")
@click.option("--password-stdin", is_flag=True, help="Read the new password from standard input.")
@pass_state
def user_password(state: CliState, username: str, password_stdin: bool) -> None:
    """Set a new password for USERNAME (asked for, read from stdin, or generated)."""
    site_name = state.open_instance().config.site.name
    password, generated = _new_password(username, password_stdin, site_name)
    instance = state.instance()
    with instance.database.transaction() as session:
        user = users.find_user(session, username)
        users.set_password(
            session, state.actor, state.clock, instance.audit, user, password, site_name=site_name
        )
    click.echo(f"password of {user.username} changed")
    if generated:
        click.echo(f"password (shown only now): {password}")


def _new_password(username: str, from_stdin: bool, site_name: str) -> tuple[str, bool]:
    """A password from stdin, a terminal prompt, or generated; checked for strength."""
    generated = False
    if from_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
        if not password:
            raise ValidationError("no password on standard input")
    elif sys.stdin.isatty():
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    else:
        password, generated = users.generate_password(username, site_name=site_name), True
    users.check_password(password, username, site_name=site_name)
    return password, generated


@user_group.command("list")
@pass_state
def user_list(state: CliState) -> None:
    """List staff accounts."""
    from kiosk.models import User

    instance = state.instance()
    with instance.database.reader() as session:
        for user in session.execute(select(User).order_by(User.username)).scalars():
            status = "" if user.active else " (disabled)"
            click.echo(f"{user.username:<20} {user.role.value:<7} {user.display_name}{status}")


@cli.group("token")
def token_group() -> None:
    """API tokens for the JSON API."""


@token_group.command("create")
@click.argument("username")
@click.option("--name", default="", help="What the token is for.")
@pass_state
def token_create(state: CliState, username: str, name: str) -> None:
    """Create an API token for USERNAME; it is printed once."""
    instance = state.instance()
    with instance.database.transaction() as session:
        user = users.find_user(session, username)
        token = users.create_token(
            session, state.actor, state.clock, instance.audit, user, name=name
        )
    click.echo(token)


# ------------------------------------------------------------------------------ audit


@cli.group("audit")
def audit_group() -> None:
    """The hash-chained audit trail."""


@audit_group.command("verify")
@pass_state
def audit_verify(state: CliState) -> None:
    """Check that no audit event was edited, removed or reordered (exit 2 if one was)."""
    instance = state.instance()
    with instance.database.reader() as session:
        report = instance.audit.verify(session)
    extra = f", {report.purged_runs} purged run(s) checkpointed" if report.purged_runs else ""
    click.echo(
        f"audit chain ok: {report.events} events, head seq {report.head_seq} "
        f"({report.head_hash[:16]}){extra}"
    )


# ------------------------------------------------------------------------------ reports


@cli.group("report")
def report_group() -> None:
    """Reports for monitoring the policy."""


@report_group.command("daily")
@click.option("--date", "day", metavar="YYYY-MM-DD", help="School day (default today).")
@click.option("--pupils", is_flag=True, help="One row per pupil instead of per form group.")
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path))
@pass_state
def report_daily(state: CliState, day: str | None, pupils: bool, output: Path | None) -> None:
    """The register as CSV per form group: deposited, exempt, nothing recorded."""
    instance = state.instance()
    chosen = (
        _parse_date(day, "--date")
        if day is not None
        else instance.policy.school_day(state.clock.now())
    )
    with instance.database.reader() as session:
        rows = reports.daily_register(session, instance.policy, chosen)
    text = reports.register_csv(rows, per_pupil=pupils)
    if output:
        output.write_text(text, encoding="utf-8")
        click.echo(f"register for {chosen} written to {output}")
    else:
        click.echo(text, nl=False)


def _day_or_today(day: str | None, instance: Instance, clock: Clock) -> date:
    """The --date given (even an empty one, which is an error), else the school's today."""
    if day is None:
        return instance.policy.school_day(clock.now())
    return _parse_date(day, "--date")


def _parse_date(value: str, option: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise ValidationError(f"{option}: expected a date YYYY-MM-DD, got {value!r}") from None


# ------------------------------------------------------------------------------ retention


@cli.group("retention")
def retention_group() -> None:
    """Keep data no longer than the policy says."""


@retention_group.command("purge")
@click.option("--dry-run", is_flag=True, help="Report what would be deleted; delete nothing.")
@pass_state
def retention_purge(state: CliState, dry_run: bool) -> None:
    """Delete records older than [policy] retention_days (never safeguarding records)."""
    instance = state.instance()
    with instance.database.transaction() as session:
        plan = retention.plan(session, state.clock, instance.policy)
        counts = plan.counts()
        if not dry_run:
            retention.apply(session, state.actor, state.clock, instance.audit, plan)
    if not dry_run and instance.database.is_sqlite:
        with instance.database.engine.connect() as connection:
            connection.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    summary = ", ".join(f"{count} {name.replace('_', ' ')}" for name, count in counts.items())
    verb = "would delete" if dry_run else "deleted"
    click.echo(f"older than {plan.cutoff:%Y-%m-%d}: {verb} {summary}")
    click.echo(f"kept: {plan.kept_held} record(s) ever under safeguarding hold")


# ------------------------------------------------------------------------------ export


@cli.group("export")
def export_group() -> None:
    """Subject access exports."""


@export_group.command("pupil")
@click.argument("admission_number")
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path))
@pass_state
def export_pupil_command(state: CliState, admission_number: str, output: Path | None) -> None:
    """Everything held about one pupil, as JSON."""
    instance = state.instance()
    with instance.database.reader() as session:
        data = export_pupil(session, admission_number, state.clock.now())
    text = json.dumps(data, indent=2, ensure_ascii=False) + "\n"
    if output:
        output.touch(mode=0o600)
        output.chmod(0o600)  # also when the file was already there
        output.write_text(text, encoding="utf-8")
        click.echo(f"export written to {output} (mode 0600)")
    else:
        click.echo(text, nl=False)


# ------------------------------------------------------------------------------ backup


@cli.command()
@click.argument("dest", type=click.Path())
@click.option(
    "--include-secret",
    is_flag=True,
    help="Also copy the site secret and config (needed to restore onto a new SD card).",
)
@pass_state
def backup(state: CliState, dest: str, include_secret: bool) -> None:
    """Copy the database to DEST (a new file, or an existing directory), consistent while the
    kiosk runs; the copy is readable by its owner only (mode 0600)."""
    instance = state.instance()
    source = instance.sqlite_path
    if source is None:
        raise LockerError(
            "the database is PostgreSQL: back it up with pg_dump "
            "(docs/operations.md, Backups: With PostgreSQL)"
        )
    written = backup_module.backup_sqlite(
        source,
        dest,
        now=state.clock.now(),
        secret=instance.home / "secret.key" if include_secret else None,
        config=instance.home / config_module.CONFIG_FILENAME if include_secret else None,
    )
    for path in written:
        click.echo(f"wrote {path}")


# ------------------------------------------------------------------------------ exemptions


@cli.group("exemption")
def exemption_group() -> None:
    """Exemptions approved by an admin (medical, educational visit, young carer, other)."""


@exemption_group.command("grant")
@click.argument("admission_number")
@click.option("--kind", required=True, help="medical, educational_visit, young_carer or other.")
@click.option("--from", "starts", required=True, metavar="YYYY-MM-DD")
@click.option("--to", "ends", metavar="YYYY-MM-DD", help="Last day (omit for open-ended).")
@click.option("--review", metavar="YYYY-MM-DD", help="Review date (required if open-ended).")
@click.option("--agreement", required=True, help="Reference of the written agreement.")
@click.option("--approved-by", required=True, metavar="USERNAME", help="The approving admin.")
@click.option("--notes", default="")
@pass_state
def exemption_grant(
    state: CliState,
    admission_number: str,
    kind: str,
    starts: str,
    ends: str | None,
    review: str | None,
    agreement: str,
    approved_by: str,
    notes: str,
) -> None:
    """Record an exemption for a pupil."""
    parsed_kind = exemptions.parse_kind(kind)
    start = _parse_date(starts, "--from")
    end = _parse_date(ends, "--to") if ends else None
    review_on = _parse_date(review, "--review") if review else None
    instance = state.instance()
    with instance.database.transaction() as session:
        pupil = find_by_admission(session, admission_number)
        admin = users.find_user(session, approved_by)
        exemption = exemptions.grant(
            session,
            Actor.for_user(admin),
            state.clock,
            instance.audit,
            pupil=pupil,
            kind=parsed_kind,
            starts_on=start,
            ends_on=end,
            agreement_reference=agreement,
            review_on=review_on,
            notes=notes,
        )
        click.echo(f"exemption {exemption.id} recorded for {admission_number}")


@exemption_group.command("list")
@click.option("--date", "day", metavar="YYYY-MM-DD", help="In force on this day (default today).")
@pass_state
def exemption_list(state: CliState, day: str | None) -> None:
    """Exemptions in force on a day."""
    instance = state.instance()
    chosen = (
        _parse_date(day, "--date")
        if day is not None
        else instance.policy.school_day(state.clock.now())
    )
    with instance.database.reader() as session:
        for exemption in exemptions.active_on(session, chosen):
            until = exemption.ends_on or f"open (review {exemption.review_on})"
            click.echo(
                f"{exemption.id:>5} {exemption.pupil.admission_number:<10} "
                f"{exemption.kind.value:<18} {exemption.starts_on} to {until}  "
                f"[{exemption.agreement_reference}]"
            )


# ------------------------------------------------------------------------------ custody


@cli.group("custody")
def custody_group() -> None:
    """Custody records."""


@custody_group.command("list")
@click.option("--state", "states", multiple=True, help="Only these states (repeatable).")
@pass_state
def custody_list(state: CliState, states: tuple[str, ...]) -> None:
    """Active custody records (or those in the given states)."""
    from kiosk.models import ACTIVE_STATES

    try:
        wanted = {CustodyState(name.upper()) for name in states} or set(ACTIVE_STATES)
    except ValueError:
        names = ", ".join(member.value for member in CustodyState)
        raise ValidationError(f"unknown state; states are {names}") from None
    instance = state.instance()
    with instance.database.reader() as session:
        records = session.execute(
            select(CustodyRecord).where(CustodyRecord.state.in_(wanted)).order_by(CustodyRecord.id)
        ).scalars()
        for record in records:
            where = f"compartment {record.compartment.number}" if record.compartment else "office"
            flag = f" [{record.flag}]" if record.flag else ""
            click.echo(
                f"{record.id:>6} {record.state.value:<18} {record.pupil.admission_number:<10} "
                f"{where:<16} since {instance.policy.local(record.updated_at):%Y-%m-%d %H:%M}"
                f"{flag}"
            )


@custody_group.command("sweep")
@pass_state
def custody_sweep(state: CliState) -> None:
    """Flag devices still in lockers after the end-of-day cut-off."""
    instance = state.instance()
    with instance.database.transaction() as session:
        flagged = instance.ledger.flag_uncollected(session, state.actor, state.clock)
    click.echo(f"{flagged} uncollected device(s) flagged")


# ------------------------------------------------------------------------------ kiosk


@cli.command("kiosk")
@click.option("--sim", is_flag=True, help="Simulated hardware (no Pi needed).")
@click.option(
    "--sim-auto-open/--no-sim-auto-open",
    default=True,
    help="With --sim: a simulated pupil pulls each door open as soon as it unlocks.",
)
@pass_state
def kiosk_command(state: CliState, sim: bool, sim_auto_open: bool) -> None:
    """Run the kiosk controller: the only process that drives the cabinet."""
    from kiosk.daemon import run_kiosk

    # The schema is checked by run_kiosk: a kiosk with an offline copy starts without the
    # database.
    run_kiosk(state.open_instance(), simulate=sim, auto_open=sim_auto_open)


@cli.command("selftest")
@click.option("--sim", is_flag=True, help="Simulated hardware (no Pi needed).")
@click.option(
    "--card-wait",
    type=click.FloatRange(min=0),
    default=10.0,
    show_default=True,
    metavar="S",
    help="Seconds to wait for a card (0: skip).",
)
@click.option(
    "--compartment",
    "compartments",
    type=click.IntRange(min=1),
    multiple=True,
    metavar="N",
    help="Test only this compartment's lock (repeatable).",
)
@click.option(
    "--pulse",
    type=click.FloatRange(min=0, min_open=True),
    metavar="S",
    help="Seconds each lock is energised (default [hardware] unlock_s).",
)
@pass_state
def selftest_command(
    state: CliState,
    sim: bool,
    card_wait: float,
    compartments: tuple[int, ...],
    pulse: float | None,
) -> None:
    """Check the cabinet part by part: reader, LED, buzzer, each door and lock, a card.

    Run it with the kiosk stopped (`systemctl stop locker-kiosk`); exit 1 if a part failed.
    """
    from kiosk.selftest import run_selftest

    ok = run_selftest(
        state.instance(),
        simulate=sim,
        out=click.echo,
        card_wait_s=card_wait,
        pulse_s=pulse,
        compartments=compartments or None,
    )
    raise click.exceptions.Exit(0 if ok else 1)


@cli.command("safe-state")
@click.option("--sim", is_flag=True, help="Simulated hardware (no Pi needed).")
@pass_state
def safe_state_command(state: CliState, sim: bool) -> None:
    """Switch every lock, the LED and the buzzer off (systemd runs this after every stop of
    the kiosk). Needs no database; exit 1 if the cabinet could not be reached."""
    from kiosk.selftest import safe_state

    instance = Instance.open(state.home)
    try:
        ok = safe_state(instance, simulate=sim, out=click.echo)
    finally:
        instance.close()
    raise click.exceptions.Exit(0 if ok else 1)


@cli.group("compartment")
def compartment_group() -> None:
    """Compartments of a kiosk."""


@compartment_group.command("in-service")
@click.argument("number", type=click.IntRange(min=1))
@click.option("--kiosk", "kiosk_name", metavar="NAME", help="Kiosk (default [kiosk] name).")
@pass_state
def compartment_in_service(state: CliState, number: int, kiosk_name: str | None) -> None:
    """Put compartment NUMBER back in service once its lock or door is fixed."""
    instance = state.instance()
    name = kiosk_name or instance.config.kiosk.name
    with instance.database.transaction() as session:
        was = cabinets.return_to_service(
            session, state.actor, state.clock, instance.audit, name, number
        )
    if was is None:
        click.echo(f"compartment {number} of kiosk {name} was already in service")
    else:
        click.echo(f"compartment {number} of kiosk {name} is back in service (was: {was})")


@cli.command("web")
@click.option("--host", help="Address to listen on (default [web] host, 127.0.0.1).")
@click.option("--port", type=int, help="Port to listen on (default [web] port, 8000).")
@pass_state
def web_command(state: CliState, host: str | None, port: int | None) -> None:
    """Run the office dashboard, kiosk screen and JSON API (waitress)."""
    import web

    instance = state.instance()
    with instance.database.transaction() as session:
        config_changes.record_changes(
            session, instance.audit, state.clock, instance.config, process="web"
        )
    app = web.create_app(instance)
    web.serve(app, host or instance.config.web.host, port or instance.config.web.port)


@cli.command("demo")
@click.option(
    "--port",
    type=int,
    envvar="PORT",
    default=8000,
    show_default=True,
    help="Port on 127.0.0.1 (or $PORT).",
)
@pass_state
def demo_command(state: CliState, port: int) -> None:
    """Try the whole product on simulated hardware: kiosk and office page in one process."""
    from kiosk.daemon import prepare_demo, run_demo

    instance, accounts = prepare_demo(state.home)
    state._instance = instance
    if accounts is None:
        click.echo(
            "demo: using the school already in this instance (reset a password with "
            f"`locker --home {instance.home} user password office`)"
        )
    else:
        click.echo(f"demo school created in {instance.home}")
        _print_accounts(accounts)
    click.echo(f"office page:   http://127.0.0.1:{port}/")
    click.echo(f"kiosk screen:  http://127.0.0.1:{port}/kiosk/{instance.config.kiosk.name}")
    click.echo("simulator panel on the office page; policy windows are open all day")
    click.echo("stop with Ctrl-C")
    run_demo(instance, port=port)


def _print_accounts(accounts: list[Any]) -> None:
    click.echo("staff accounts (passwords are shown only now):")
    for account in accounts:
        click.echo(f"  {account.username:<8} {account.role.value:<6} {account.password}")


# ------------------------------------------------------------------------------ entry point


def _fail(message: str, code: int) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def _home_argument(argv: list[str] | None) -> str | None:
    """The --home given on the command line, for messages about an unexpected failure."""
    args = sys.argv[1:] if argv is None else argv
    for index, arg in enumerate(args):
        if arg == "--home" and index + 1 < len(args):
            return args[index + 1]
        if arg.startswith("--home="):
            return arg.split("=", 1)[1]
    return None


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``locker`` console script."""
    debug = "--debug" in (argv if argv is not None else sys.argv[1:])
    try:
        result = cli.main(args=argv, prog_name="locker", standalone_mode=False)
    except ImportRejected as exc:
        click.echo(f"error: {exc}", err=True)
        for problem in exc.problems:
            click.echo(f"  {problem}", err=True)
        sys.exit(exc.exit_code)
    except LockerError as exc:
        _fail(str(exc), exc.exit_code)
    except click.exceptions.NoArgsIsHelpError as exc:
        click.echo(exc.format_message(), err=True)  # the help of the group asked about
        sys.exit(EX_USAGE)
    except click.UsageError as exc:
        hint = f" (see: {exc.ctx.command_path} --help)" if exc.ctx else ""
        _fail(f"{exc.format_message()}{hint}", EX_USAGE)
    except click.ClickException as exc:
        _fail(exc.format_message(), exc.exit_code)
    except click.exceptions.Abort:
        _fail("aborted", 130)
    except KeyboardInterrupt:
        _fail("interrupted", 130)
    except (OperationalError, InterfaceError) as exc:
        if debug:
            raise
        cause = (str(exc.orig or exc).strip().splitlines() or [""])[0]
        _fail(
            f"the database cannot be used ({cause}): check that its server is up and reachable "
            "and [database] url in config.toml, then try again",
            EX_TEMPFAIL,
        )
    except Exception as exc:
        if debug:
            raise
        log.debug("unexpected error", exc_info=True)
        cause = getattr(exc, "orig", None) or exc
        first_line = (str(cause).strip().splitlines() or [""])[0]
        _fail(
            f"unexpected {type(cause).__name__}: {first_line}; re-run with --debug for "
            f"details (home: {resolve_home(_home_argument(argv))})",
            EX_SOFTWARE,
        )
    sys.exit(result if isinstance(result, int) else 0)


__all__ = ["Role", "cli", "main"]
