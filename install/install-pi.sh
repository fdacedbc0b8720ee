#!/bin/bash
# Install or upgrade the phone locker on a Raspberry Pi (Raspberry Pi OS bookworm, Pi 4 or 5).
#
#     sudo ./install/install-pi.sh            # from the source tree you want installed
#
# What it does (docs/install.md says more), each step only if it is not done yet:
#   1. system packages (python3-venv, python3-dev, build-essential, swig, liblgpio-dev);
#   2. a `locker` system user (the kiosk) in the gpio, spi and i2c groups (missing groups
#      are created), and a `locker-web` system user (the web app) in no device group; both
#      share the `locker` group, which owns the data;
#   3. SPI and I2C switched on (raspi-config, else config.txt; a reboot is needed once);
#   4. the application built as a release of its own, /opt/locker/releases/VERSION-DIGEST
#      (a copy of this source tree and a virtual environment made from it), while the
#      running services carry on with the old one: a build that fails (no internet, say)
#      changes nothing that runs;
#   5. /etc/locker/config.toml (a commented example of every key; never overwritten),
#      linked from the state directory /var/lib/locker, where `locker init` creates the
#      site secret and the database, or upgrades it (on a shared PostgreSQL database under
#      a lock, so that Pis upgraded at the same time take turns);
#   6. the new release switched in (/opt/locker/venv and /opt/locker/src are links to it),
#      the systemd units and timers installed and enabled, the services restarted, and
#      the previous release removed.
# Running it again changes nothing that is already right: that is how to upgrade.
#
# --root DIR installs into the Debian system at DIR (an image being built, a debootstrap
# root): the script runs itself there with chroot; see --help.
set -Eeuo pipefail

# ------------------------------------------------------------------------------ settings

APP=/opt/locker
RELEASES=$APP/releases
VENV=$APP/venv    # a link to the current release's virtual environment
APP_SRC=$APP/src  # a link to the current release's copy of the source
LIBEXEC=$APP/libexec
ETC=/etc/locker
STATE=/var/lib/locker
BACKUPS=/var/backups/locker
UNITDIR=/etc/systemd/system
WRAPPER=/usr/local/bin/locker
USER_NAME=locker    # the kiosk, and the owner of the data
WEB_USER=locker-web # the web app: group locker, no device group
DATA_GROUP=locker
DEVICE_GROUPS="gpio spi i2c"
MFRC522=mfrc522==0.0.7
APT_PACKAGES="python3-venv python3-dev python3-pip build-essential swig"
SERVICES="locker-kiosk.service locker-web.service"
TIMERS="locker-backup.timer locker-retention.timer"
SOURCE_PARTS="pyproject.toml README.md LICENSE COPYING hardware kiosk web systemd install docs"
CHROOT_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

SOURCE="$(cd "$(dirname "$0")/.." && pwd)"
ROOT=""
PYTHON=python3
EXTRAS=pi
PIP_ARGS=""
WHEELHOUSE=""
WITH_PACKAGES=yes
WITH_START=yes
SCREEN_USER=auto
PASS=() # the options handed on to the run inside --root

usage() {
    cat <<EOF
Usage: sudo $0 [options]

Install or upgrade the phone locker on this Raspberry Pi. Safe to run again.

Options:
  --root DIR          install into the Debian system at DIR instead of this one (an image
                      being built, a debootstrap root): the script runs itself there with
                      chroot, with /dev and /proc mounted for the time of the run. DIR
                      needs bash and, unless --no-packages, network access for apt-get;
                      services are enabled there, never started
  --source DIR        the source tree to install (default: $SOURCE)
  --python PROGRAM    the Python that creates the virtual environment (default: python3)
  --extras LIST       pip extras of the application (default: pi; "" for none)
  --wheelhouse DIR    install the Python packages from the wheels in DIR only, without an
                      index (a school without internet; see docs/install.md)
  --pip-args ARGS     extra arguments for every pip install
  --no-packages       do not apt-get install the system packages
  --no-start          enable the services but do not start or restart them
  --screen-user USER  the desktop user whose display shows the kiosk screen
                      (default: the auto-login user, if there is a desktop)
  --no-screen         no kiosk screen on this Pi
  -h, --help          this help
EOF
}

# ------------------------------------------------------------------------------ helpers

say() { printf 'locker-install: %s\n' "$*"; }
step() { printf '\n==> %s\n' "$*"; }
warn() { printf 'locker-install: WARNING: %s\n' "$*" >&2; }
die() {
    printf 'locker-install: error: %s\n' "$*" >&2
    exit 1
}

SWITCHED=no # has the new release replaced the running one yet?
CLEANUP=""  # a directory to remove when the script ends, however it ends
on_error() {
    echo "locker-install: FAILED at line $1 (see above); fix it and run me again" >&2
    if [ "$SWITCHED" = no ]; then
        echo "locker-install: nothing that runs was changed: the installed version (if any) keeps running" >&2
    fi
}
trap 'on_error $LINENO' ERR
trap '[ -z "$CLEANUP" ] || rm -rf "$CLEANUP"' EXIT

while [ $# -gt 0 ]; do
    case "$1" in
        --root) ROOT="${2:?--root needs a directory}"; shift 2 ;;
        --root=*) ROOT="${1#*=}"; shift ;;
        --source) SOURCE="${2:?--source needs a directory}"; shift 2 ;;
        --source=*) SOURCE="${1#*=}"; shift ;;
        --wheelhouse) WHEELHOUSE="${2:?--wheelhouse needs a directory}"; shift 2 ;;
        --wheelhouse=*) WHEELHOUSE="${1#*=}"; shift ;;
        --python) PYTHON="${2:?--python needs a program}"; PASS+=(--python "$PYTHON"); shift 2 ;;
        --python=*) PYTHON="${1#*=}"; PASS+=(--python "$PYTHON"); shift ;;
        --extras) EXTRAS="${2?--extras needs a list}"; PASS+=(--extras "$EXTRAS"); shift 2 ;;
        --extras=*) EXTRAS="${1#*=}"; PASS+=(--extras "$EXTRAS"); shift ;;
        --pip-args) PIP_ARGS="${2?--pip-args needs arguments}"; PASS+=(--pip-args "$PIP_ARGS"); shift 2 ;;
        --pip-args=*) PIP_ARGS="${1#*=}"; PASS+=(--pip-args "$PIP_ARGS"); shift ;;
        --no-packages) WITH_PACKAGES=no; PASS+=("$1"); shift ;;
        --no-start) WITH_START=no; PASS+=("$1"); shift ;;
        --screen-user) SCREEN_USER="${2:?--screen-user needs a user name}"; PASS+=(--screen-user "$SCREEN_USER"); shift 2 ;;
        --screen-user=*) SCREEN_USER="${1#*=}"; PASS+=(--screen-user "$SCREEN_USER"); shift ;;
        --no-screen) SCREEN_USER=none; PASS+=("$1"); shift ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; die "unknown option: $1" ;;
    esac
done

[ "$(id -u)" -eq 0 ] || die "run me as root: sudo $0"
SOURCE="$(cd "$SOURCE" && pwd)"
if [ ! -f "$SOURCE/pyproject.toml" ] || [ ! -d "$SOURCE/kiosk" ]; then
    die "$SOURCE is not the phone locker's source tree (no pyproject.toml and kiosk/)"
fi
if [ -n "$WHEELHOUSE" ]; then
    [ -d "$WHEELHOUSE" ] || die "--wheelhouse $WHEELHOUSE: no such directory"
    WHEELHOUSE="$(cd "$WHEELHOUSE" && pwd)"
fi

# Copy the parts of the source tree that make the application: copy_source TARGET.
copy_source() {
    local parts=() part
    for part in $SOURCE_PARTS; do
        [ -e "$SOURCE/$part" ] && parts+=("$part")
    done
    mkdir -p "$1"
    tar -C "$SOURCE" --exclude=__pycache__ --exclude='*.pyc' --exclude='*.egg-info' \
        --exclude=screenshots --exclude=build -cf - "${parts[@]}" |
        tar -C "$1" --no-same-owner --no-same-permissions -xf -
    chmod -R u=rwX,go=rX "$1"
}

# ------------------------------------------------------------------------------ --root

# Another system (an image, a debootstrap root): copy the source (and the wheelhouse) into
# it and run this script there with chroot, so that the virtual environment is made by
# that system's Python at its final paths, the users go into its /etc/passwd, and so on.
if [ -n "$ROOT" ]; then
    [ -d "$ROOT" ] || die "--root $ROOT: no such directory"
    ROOT="$(cd "$ROOT" && pwd)"
fi
if [ -n "$ROOT" ] && [ "$ROOT" != / ]; then
    for needed in bin/bash usr/bin/env etc/passwd; do
        [ -e "$ROOT/$needed" ] || die "--root $ROOT is not a Debian system (no /$needed): make one with debootstrap, or mount an image there"
    done
    command -v chroot >/dev/null 2>&1 || die "chroot is missing (coreutils)"
    mkdir -p "$ROOT/var/tmp"
    stage="$(mktemp -d "$ROOT/var/tmp/locker-install.XXXXXX")"
    CLEANUP="$stage"
    inside="${stage#"$ROOT"}"
    copy_source "$stage/src"
    inner=(--source "$inside/src")
    if [ -n "$WHEELHOUSE" ]; then
        cp -R "$WHEELHOUSE" "$stage/wheels"
        inner+=(--wheelhouse "$inside/wheels")
    fi
    environment=(PATH="$CHROOT_PATH" HOME=/root LANG=C.UTF-8 INSTALL_PI_ROOT="$ROOT")
    for name in TERM RASPI_CONFIG http_proxy https_proxy no_proxy HTTP_PROXY HTTPS_PROXY \
        NO_PROXY PIP_INDEX_URL PIP_EXTRA_INDEX_URL PIP_TRUSTED_HOST; do
        [ -z "${!name:-}" ] || environment+=("$name=${!name}")
    done
    command=(/usr/bin/env -i "${environment[@]}" /bin/bash "$inside/src/install/install-pi.sh"
        "${inner[@]}" "${PASS[@]}")
    say "installing into $ROOT (chroot)"
    status=0
    if unshare --mount true 2>/dev/null; then
        # A mount namespace of our own: the mounts vanish with it, whatever happens.
        # shellcheck disable=SC2016  # the script is for sh -c
        unshare --mount --propagation private -- /bin/sh -c '
            set -e
            root="$1"
            shift
            mkdir -p "$root/dev" "$root/proc"
            mount --rbind /dev "$root/dev"
            mount -t proc proc "$root/proc"
            if [ -f "$root/etc/resolv.conf" ] && [ ! -L "$root/etc/resolv.conf" ]; then
                mount --bind /etc/resolv.conf "$root/etc/resolv.conf"
            fi
            exec chroot "$root" "$@"' sh "$ROOT" "${command[@]}" || status=$?
    else
        warn "no mount namespace here (unshare --mount): running in $ROOT without /dev and /proc mounted"
        chroot "$ROOT" "${command[@]}" || status=$?
    fi
    exit "$status"
fi
cd / # never write into the directory we were started from

# The running system, with systemd as init: only then are units started and reloaded.
LIVE=no
if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
    LIVE=yes
fi
WHERE="${INSTALL_PI_ROOT:+ (in $INSTALL_PI_ROOT)}"

has_group() { grep -q "^$1:" /etc/group; }
has_user() { grep -q "^$1:" /etc/passwd; }
# Is user $2 a member of group $1 (as a supplementary group)?
in_group() {
    awk -F: -v group="$1" -v user="$2" '
        $1 == group { n = split($4, members, ","); for (i = 1; i <= n; i++) if (members[i] == user) found = 1 }
        END { exit !found }' /etc/group
}
uid_of() { awk -F: -v name="$1" '$1 == name { print $3 }' /etc/passwd; }
gid_of() { awk -F: -v name="$1" '$1 == name { print $3 }' /etc/group; }
primary_gid_of() { awk -F: -v name="$1" '$1 == name { print $4 }' /etc/passwd; }

# Create or fix a directory: ensure_dir MODE OWNER GROUP PATH (ids are numeric). A mount
# point (a USB stick for backups) keeps the owner and mode its mount options give it.
ensure_dir() {
    mkdir -p "$4"
    if mountpoint -q "$4" 2>/dev/null; then
        say "$4 is a mount point: its owner and mode are left to the mount options"
        return
    fi
    chown "$2:$3" "$4"
    chmod "$1" "$4"
}

# Write file $2 from standard input unless it has exactly that content already; mode $1.
install_file() {
    local mode="$1" target="$2" tmp
    tmp="$(mktemp "$target.XXXXXX")"
    cat >"$tmp"
    chmod "$mode" "$tmp"
    if [ -f "$target" ] && cmp -s "$tmp" "$target"; then
        rm -f "$tmp"
        chmod "$mode" "$target"
    else
        mv -f "$tmp" "$target"
        say "wrote $target"
    fi
}

REBOOT_NEEDED=no

# ------------------------------------------------------------------------------ 1. packages

step "System packages$WHERE"
if [ "$WITH_PACKAGES" = no ]; then
    say "skipped (--no-packages)"
else
    packages="$APT_PACKAGES"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    # Raspberry Pi OS has the lgpio C library; pip builds the lgpio module against it where
    # no wheel fits.
    if apt-cache show liblgpio-dev >/dev/null 2>&1; then
        packages="$packages liblgpio-dev"
    fi
    # shellcheck disable=SC2086  # a list of package names
    apt-get install -y -q --no-install-recommends $packages
fi

# ------------------------------------------------------------------------------ 2. users

step "The users: $USER_NAME (the kiosk, with the device groups) and $WEB_USER (the web app)"
for group in $DEVICE_GROUPS; do
    if ! has_group "$group"; then
        groupadd --system "$group"
        say "created group $group (on a Pi, udev gives it the $group devices)"
    fi
done
if ! has_group "$DATA_GROUP"; then
    groupadd --system "$DATA_GROUP"
fi
if ! has_user "$USER_NAME"; then
    useradd --system --gid "$DATA_GROUP" --groups "${DEVICE_GROUPS// /,}" \
        --home-dir "$STATE" --no-create-home --shell /usr/sbin/nologin \
        --comment "Phone locker" "$USER_NAME"
    say "created system user $USER_NAME (groups: $DEVICE_GROUPS)"
else
    missing=""
    for group in $DEVICE_GROUPS; do
        in_group "$group" "$USER_NAME" || missing="${missing:+$missing,}$group"
    done
    if [ -n "$missing" ]; then
        usermod -a -G "$missing" "$USER_NAME"
        say "added $USER_NAME to $missing"
    else
        say "user $USER_NAME exists, in groups $DEVICE_GROUPS"
    fi
fi
LOCKER_UID="$(uid_of "$USER_NAME")"
LOCKER_GID="$(gid_of "$DATA_GROUP")"
if [ -z "$LOCKER_UID" ] || [ -z "$LOCKER_GID" ]; then
    die "cannot find the ids of user $USER_NAME and group $DATA_GROUP"
fi
# The web app reads the configuration and the site secret and writes the database: group
# locker. It never touches the hardware: no device group, ever.
if ! has_user "$WEB_USER"; then
    useradd --system --gid "$DATA_GROUP" --home-dir "$STATE" --no-create-home \
        --shell /usr/sbin/nologin --comment "Phone locker web app" "$WEB_USER"
    say "created system user $WEB_USER (group $DATA_GROUP, no device group)"
else
    if [ "$(primary_gid_of "$WEB_USER")" != "$LOCKER_GID" ]; then
        usermod -g "$DATA_GROUP" "$WEB_USER"
        say "gave $WEB_USER the group $DATA_GROUP"
    fi
    for group in $DEVICE_GROUPS; do
        if in_group "$group" "$WEB_USER"; then
            gpasswd -d "$WEB_USER" "$group" >/dev/null
            say "took $WEB_USER out of $group: the web app has no device access"
        fi
    done
    say "user $WEB_USER exists, in group $DATA_GROUP only"
fi

# ------------------------------------------------------------------------------ 3. SPI, I2C

step "SPI (RC522 reader) and I2C (MCP23017 expanders)"
# raspi-config on this system (RASPI_CONFIG may name another one, e.g. in tests);
# otherwise config.txt is edited directly.
raspi_config="${RASPI_CONFIG:-}"
if [ -z "$raspi_config" ] && command -v raspi-config >/dev/null 2>&1; then
    raspi_config=raspi-config
fi
config_txt=""
for candidate in /boot/firmware/config.txt /boot/config.txt; do
    if [ -f "$candidate" ]; then
        config_txt="$candidate"
        break
    fi
done
dtparam_on() { grep -Eq "^[[:space:]]*dtparam=$1=on([[:space:]]|$)" "$config_txt"; }
if [ -n "$config_txt" ] && dtparam_on spi && dtparam_on i2c_arm; then
    say "already on in $config_txt"
elif [ -n "$raspi_config" ]; then
    # 0 means "enable" to raspi-config's non-interactive mode.
    "$raspi_config" nonint do_spi 0
    "$raspi_config" nonint do_i2c 0
    say "switched on with raspi-config"
    REBOOT_NEEDED=yes
elif [ -n "$config_txt" ]; then
    lines=()
    dtparam_on spi || lines+=("dtparam=spi=on")
    dtparam_on i2c_arm || lines+=("dtparam=i2c_arm=on")
    {
        printf '\n[all]\n# Phone locker: SPI0 for the RC522 reader, I2C1 for the MCP23017 expanders.\n'
        printf '%s\n' "${lines[@]}"
    } >>"$config_txt"
    say "added ${lines[*]} to $config_txt"
    REBOOT_NEEDED=yes
else
    warn "no raspi-config and no config.txt here: switch SPI and I2C on by hand."
    warn "  Raspberry Pi OS: sudo raspi-config > Interface Options > SPI, then I2C;"
    warn "  or add to /boot/firmware/config.txt, under [all]:"
    warn "      dtparam=spi=on"
    warn "      dtparam=i2c_arm=on"
    warn "  and 'i2c-dev' to /etc/modules; then reboot."
fi
# The i2c-dev module makes /dev/i2c-1 (raspi-config adds it; config.txt alone does not).
if [ -n "$config_txt" ] && [ -z "$raspi_config" ]; then
    modules=/etc/modules
    if ! { [ -f "$modules" ] && grep -Eq '^[[:space:]]*i2c-dev([[:space:]]|$)' "$modules"; }; then
        printf 'i2c-dev\n' >>"$modules"
        say "added i2c-dev to /etc/modules"
        REBOOT_NEEDED=yes
    fi
fi

# ------------------------------------------------------------------------------ 4. app

# Nothing that runs is stopped here: the new version is built beside the old one, in a
# directory named by what goes into it, and switched in at step 6.
step "The application, as a release in $RELEASES"
command -v "$PYTHON" >/dev/null 2>&1 || die "no $PYTHON here: apt-get install python3-venv"
ensure_dir 0755 0 0 "$APP"
ensure_dir 0755 0 0 "$RELEASES"
ensure_dir 0755 0 0 "$LIBEXEC"
staged="$(mktemp -d "$RELEASES/.new.XXXXXX")"
CLEANUP="$staged"
copy_source "$staged"

# The release's name: the version and a digest of the source, the extras and the Python.
# The same source installed again finds its release there and builds nothing.
version="$(sed -nE 's/^version[[:space:]]*=[[:space:]]*"([^"]+)".*/\1/p' "$staged/pyproject.toml" | head -n 1)"
digest="$(
    {
        (cd "$staged" && find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum)
        printf 'extras=%s\nmfrc522=%s\n' "$EXTRAS" "$MFRC522"
        "$PYTHON" -c 'import platform, sys; print(sys.version, platform.machine())'
    } | sha256sum | cut -c1-12
)"
NAME="${version:-0}-$digest"
RELEASE="$RELEASES/$NAME"
NEW_PYTHON="$RELEASE/venv/bin/python"
LOCKER="$RELEASE/venv/bin/locker"

pip_install() {
    # shellcheck disable=SC2086  # PIP_ARGS is a list of arguments
    "$NEW_PYTHON" -m pip install --disable-pip-version-check --no-input --quiet \
        $PIP_ARGS ${WHEELHOUSE:+--no-index --find-links "$WHEELHOUSE"} "$@"
}
# Build the release; any failure returns 1 (the caller removes what was half made).
build_release() {
    "$PYTHON" -m venv "$RELEASE/venv" || return 1
    say "created the virtual environment with $("$NEW_PYTHON" --version)"
    local requirement="$RELEASE/src"
    [ -z "$EXTRAS" ] || requirement="$RELEASE/src[$EXTRAS]"
    pip_install "$requirement" || return 1
    # Last, and without its dependencies: mfrc522 depends on RPi.GPIO, which would replace
    # rpi-lgpio's RPi.GPIO (the one that works on a Pi 5; see README, "Raspberry Pi 5").
    pip_install --no-deps "$MFRC522" || return 1
    if [[ ",$EXTRAS," == *,pi,* ]] && "$NEW_PYTHON" -m pip show --quiet RPi.GPIO >/dev/null 2>&1; then
        warn "the old RPi.GPIO package is installed: replacing it with rpi-lgpio"
        "$NEW_PYTHON" -m pip uninstall --yes --quiet RPi.GPIO || return 1
        pip_install --no-deps --force-reinstall rpi-lgpio || return 1
    fi
    rm -rf "$RELEASE/src/build" "$RELEASE/src"/*.egg-info
    # The program starts, and the web app's packages import.
    "$LOCKER" --version >/dev/null || return 1
    "$NEW_PYTHON" -c 'import kiosk.cli, web' || return 1
    printf 'release=%s\nextras=%s\n' "$NAME" "$EXTRAS" >"$RELEASE/.installed"
}

if [ -f "$RELEASE/.installed" ] && "$LOCKER" --version >/dev/null 2>&1; then
    rm -rf "$staged"
    say "release $NAME is installed already (this source, these extras): nothing to build"
else
    rm -rf "$RELEASE"
    mkdir -m 0755 "$RELEASE"
    mv "$staged" "$RELEASE/src"
    chmod 0755 "$RELEASE/src"
    CLEANUP="$RELEASE"
    if ! build_release; then
        rm -rf "$RELEASE"
        CLEANUP=""
        die "could not build release $NAME (see above; without internet: --wheelhouse, docs/install.md). Nothing that runs was changed: the installed version (if any) keeps running"
    fi
    say "built release $NAME: $("$LOCKER" --version)"
fi
CLEANUP=""

install -D -m 0755 "$SOURCE/install/locker-wrapper.sh" "$WRAPPER"
install -m 0755 "$SOURCE/install/locker-backup.sh" "$LIBEXEC/locker-backup"
install -m 0755 "$SOURCE/install/locker-screen.sh" "$LIBEXEC/locker-screen"
say "the locker command: $WRAPPER"

# ------------------------------------------------------------------------------ 5. config, state

step "Configuration in $ETC, state in $STATE"
# /etc/locker: root's, readable by group locker (the kiosk and the web app).
ensure_dir 0750 0 "$LOCKER_GID" "$ETC"
# /var/lib/locker: the kiosk's; group locker may write in it (SQLite makes its -wal and
# -shm files beside the database, whichever process opens it first). Setgid: what is
# made here belongs to group locker. Sticky: only the kiosk (the owner) and root may
# remove or replace a file they did not make, so the web app cannot swap the secret.
ensure_dir 3770 "$LOCKER_UID" "$LOCKER_GID" "$STATE"
ensure_dir 0700 "$LOCKER_UID" "$LOCKER_GID" "$BACKUPS"

locker_cmd() {
    env -u LOCKER_HOME "$LOCKER" --home "$STATE" "$@"
}

config="$ETC/config.toml"
link="$STATE/config.toml"
link_target=../../../etc/locker/config.toml # relative: right in an image root too
if [ ! -e "$config" ]; then
    if [ -f "$link" ] && [ ! -L "$link" ]; then
        mv "$link" "$config"
        say "moved the existing $STATE/config.toml to $ETC/config.toml"
    else
        locker_cmd config example >"$config.new"
        mv "$config.new" "$config"
        say "wrote $ETC/config.toml: every key, commented, with its default"
    fi
else
    say "$ETC/config.toml exists: kept as it is"
fi
chown "0:$LOCKER_GID" "$config"
chmod 0640 "$config"
if [ -L "$link" ]; then
    if [ "$(readlink -f "$link")" != "$(readlink -f "$config")" ]; then
        warn "$STATE/config.toml links elsewhere ($(readlink "$link")); left as it is"
    fi
elif [ -e "$link" ]; then
    warn "$STATE/config.toml is a file of its own, not a link to $ETC/config.toml: the"
    warn "  services read it, not $ETC/config.toml. Merge the two and replace it with:"
    warn "  sudo ln -sf $ETC/config.toml $STATE/config.toml"
else
    ln -s "$link_target" "$link"
    say "linked $STATE/config.toml -> $ETC/config.toml"
fi

if [ ! -e "$ETC/backup.env" ]; then
    install_file 0644 "$ETC/backup.env" <"$SOURCE/install/backup.env"
fi

# `locker init` creates the site secret and the database, or upgrades the schema, with the
# new release (the old one may still be running: it is restarted at step 6). On a shared
# PostgreSQL database every Pi runs it: the first one upgrades the schema under a lock,
# the others wait for it and find the schema up to date. It runs as root; whatever it
# creates is then handed to the locker user and group.
(umask 027 && locker_cmd init)
find "$STATE" -xdev ! -type l \( ! -uid "$LOCKER_UID" -o ! -gid "$LOCKER_GID" \) \
    -exec chown "$LOCKER_UID:$LOCKER_GID" {} +
# The web app reads the secret (sessions, tokens, card hashes, the audit chain) and reads
# and writes the database; nobody outside group locker may do either.
[ ! -f "$STATE/secret.key" ] || chmod 0640 "$STATE/secret.key"
for file in "$STATE/locker.db" "$STATE/locker.db-wal" "$STATE/locker.db-shm"; do
    [ ! -f "$file" ] || chmod 0660 "$file"
done

# The kiosk screen's address, from [web] port (kept once written). /kiosk/ is sent on by the
# web app to this cabinet's own screen, /kiosk/NAME ([kiosk] name), so a rename needs nothing.
read -r WEB_PORT < <(
    env -u LOCKER_HOME "$NEW_PYTHON" -c '
import sys
from pathlib import Path
from kiosk.config import load
print(load(Path(sys.argv[1])).web.port)' "$STATE" 2>/dev/null || echo "8000"
)
if [ ! -e "$ETC/screen.env" ]; then
    install_file 0644 "$ETC/screen.env" <<EOF
# The kiosk screen (locker-screen@USER.service, /opt/locker/libexec/locker-screen).
# Written once by the install script from [web] port; edit it if that changes. /kiosk/ leads
# to this cabinet's screen, /kiosk/NAME from [kiosk] name.
LOCKER_SCREEN_URL=http://127.0.0.1:$WEB_PORT/kiosk/
# WAYLAND_DISPLAY=wayland-0   # or DISPLAY=:0, to skip the search for the display
EOF
fi

CONFIG_OK=no
if check="$(locker_cmd config check --require-cabinet 2>&1)"; then
    CONFIG_OK=yes
    say "$check"
else
    say "the kiosk is not configured yet: $check"
fi

# ------------------------------------------------------------------------------ 6. switch, systemd

step "Release $NAME switched in; systemd units"
# Point link $2 at $1 (relative to /opt/locker), in one rename. A directory of the layout
# before releases (a plain venv/ or src/) is moved aside, and removed with the old releases.
switch_link() {
    local target="$1" link="$2"
    if [ -L "$link" ] && [ "$(readlink "$link")" = "$target" ]; then
        return 0
    fi
    if [ -e "$link" ] && [ ! -L "$link" ]; then
        rm -rf "$link.old"
        mv "$link" "$link.old"
    fi
    ln -sfn "$target" "$link.new"
    mv -Tf "$link.new" "$link"
    say "$link -> $target"
}
previous=""
if [ -L "$VENV" ]; then
    previous="$(readlink "$VENV")"
    previous="${previous#releases/}"
    previous="${previous%/venv}"
fi
switch_link "releases/$NAME/venv" "$VENV"
switch_link "releases/$NAME/src" "$APP_SRC"
SWITCHED=yes

mkdir -p "$UNITDIR"
for unit in "$SOURCE"/systemd/*.service "$SOURCE"/systemd/*.timer; do
    install_file 0644 "$UNITDIR/${unit##*/}" <"$unit"
done

if [ "$SCREEN_USER" = auto ]; then
    SCREEN_USER=none
    autologin=""
    if [ -f /etc/lightdm/lightdm.conf ]; then
        autologin="$(sed -nE 's/^[[:space:]]*autologin-user[[:space:]]*=[[:space:]]*([^[:space:]]+).*/\1/p' \
            /etc/lightdm/lightdm.conf | tail -n 1)"
    fi
    if [ -n "$autologin" ] && has_user "$autologin"; then
        SCREEN_USER="$autologin"
        say "kiosk screen for the desktop's auto-login user $SCREEN_USER"
    else
        say "no desktop auto-login user found: no kiosk screen (see --screen-user)"
    fi
elif [ "$SCREEN_USER" != none ] && ! has_user "$SCREEN_USER"; then
    die "--screen-user $SCREEN_USER: no such user"
fi
read -r -a enable <<<"$SERVICES $TIMERS"
[ "$SCREEN_USER" = none ] || enable+=("locker-screen@$SCREEN_USER.service")

if [ "$LIVE" = yes ]; then
    systemctl daemon-reload
    systemctl enable --quiet "${enable[@]}"
    say "enabled: ${enable[*]}"
elif command -v systemctl >/dev/null 2>&1; then
    systemctl --root=/ enable --quiet "${enable[@]}"
    say "enabled (offline, systemctl --root): ${enable[*]}"
else
    say "no systemctl: enable these yourself: ${enable[*]}"
fi

# Does anything still run the previous release? Then it is kept until that is restarted.
OLD_RUNNING=""
if [ "$LIVE" = yes ] && [ "$WITH_START" = yes ]; then
    # shellcheck disable=SC2086  # a list of unit names
    systemctl start $TIMERS
    systemctl restart locker-web.service
    if [ "$CONFIG_OK" = yes ]; then
        systemctl restart locker-kiosk.service
        say "restarted locker-web and locker-kiosk with release $NAME"
    else
        if systemctl is-active --quiet locker-kiosk.service; then
            OLD_RUNNING="locker-kiosk.service"
            warn "locker-kiosk runs the previous release; this one finds the configuration"
            warn "  wrong (above): fix it, then: sudo systemctl restart locker-kiosk"
        fi
        say "restarted locker-web; locker-kiosk starts once /etc/locker/config.toml describes"
        say "  the cabinet ([kiosk] and [hardware]: docs/hardware.md):"
        say "  sudo locker config check --require-cabinet && sudo systemctl start locker-kiosk"
    fi
    if [ "$SCREEN_USER" != none ]; then
        systemctl restart "locker-screen@$SCREEN_USER.service"
        if [ -n "$raspi_config" ]; then
            "$raspi_config" nonint do_blanking 1 || true # keep the kiosk screen on
        fi
    fi
elif [ "$LIVE" = yes ] && [ "$previous" != "$NAME" ]; then
    for unit in $SERVICES; do
        if systemctl is-active --quiet "$unit"; then
            OLD_RUNNING="$OLD_RUNNING $unit"
        fi
    done
    [ -z "$OLD_RUNNING" ] || say "not restarted (--no-start):$OLD_RUNNING; they use release $NAME once restarted"
else
    say "services not started here (no running systemd$WHERE)"
fi

# The previous releases go, unless a service still runs one of them.
if [ -z "$OLD_RUNNING" ]; then
    for old in "$RELEASES"/* "$RELEASES"/.new.* "$VENV.old" "$APP_SRC.old"; do
        [ -e "$old" ] || continue
        [ "$old" != "$RELEASE" ] || continue
        rm -rf "$old"
        say "removed the previous ${old#"$APP"/}"
    done
elif [ -n "$previous" ] && [ "$previous" != "$NAME" ]; then
    say "kept the previous release $previous: it still runs"
fi

# ------------------------------------------------------------------------------ done

step "Done"
say "release: $NAME   configuration: $ETC/config.toml   state: $STATE   backups: $BACKUPS"
say "logs: journalctl -u locker-kiosk -u locker-web"
if [ "$REBOOT_NEEDED" = yes ]; then
    say "SPI/I2C were switched on: reboot once (sudo reboot) before the kiosk can use them"
fi
say "next: describe the cabinet in $ETC/config.toml, then: sudo locker selftest"
say "      (docs/hardware.md), and go live: docs/operations.md, Going live"
