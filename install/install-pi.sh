#!/bin/bash
# Install or upgrade the phone locker on a Raspberry Pi (Raspberry Pi OS bookworm, Pi 4 or 5).
#
#     sudo ./install/install-pi.sh            # from the source tree you want installed
#
# What it does (docs/install.md says more), each step only if it is not done yet:
#   1. system packages (python3-venv, python3-dev, build-essential, swig, liblgpio-dev);
#   2. a `locker` system user in the gpio, spi and i2c groups (missing groups are created);
#   3. SPI and I2C switched on (raspi-config, else config.txt; a reboot is needed once);
#   4. the application in a virtual environment, /opt/locker/venv, from a copy of this
#      source tree in /opt/locker/src; /usr/local/bin/locker runs it;
#   5. /etc/locker/config.toml (a commented example of every key; never overwritten),
#      linked from the state directory /var/lib/locker (owner locker, mode 0750), where
#      `locker init` creates the site secret (mode 0600) and the database, or upgrades it;
#   6. the systemd units and timers, enabled; the services (re)started.
# Running it again changes nothing that is already right: that is how to upgrade.
#
# For tests and image building, --root DIR puts every path under DIR and skips what needs
# the running system (apt-get, systemctl start, raspi-config): see --help.
set -Eeuo pipefail
trap 'echo "locker-install: FAILED at line $LINENO (see above); fix it and run me again" >&2' ERR

# ------------------------------------------------------------------------------ settings

APP=/opt/locker
VENV=$APP/venv
APP_SRC=$APP/src
LIBEXEC=$APP/libexec
ETC=/etc/locker
STATE=/var/lib/locker
BACKUPS=/var/backups/locker
UNITDIR=/etc/systemd/system
WRAPPER=/usr/local/bin/locker
USER_NAME=locker
DEVICE_GROUPS="gpio spi i2c"
MFRC522=mfrc522==0.0.7
APT_PACKAGES="python3-venv python3-dev python3-pip build-essential swig"
SERVICES="locker-kiosk.service locker-web.service"
TIMERS="locker-backup.timer locker-retention.timer"

SOURCE="$(cd "$(dirname "$0")/.." && pwd)"
ROOT=""
PYTHON=python3
EXTRAS=pi
PIP_ARGS=""
WITH_PACKAGES=yes
WITH_START=yes
SCREEN_USER=auto

usage() {
    cat <<EOF
Usage: sudo $0 [options]

Install or upgrade the phone locker on this Raspberry Pi. Safe to run again.

Options:
  --root DIR          install under DIR instead of / (tests, image building): every path
                      is prefixed; apt-get, raspi-config and starting services are skipped
                      (units are enabled with systemctl --root when systemctl exists)
  --source DIR        the source tree to install (default: $SOURCE)
  --python PROGRAM    the Python that creates the virtual environment (default: python3)
  --extras LIST       pip extras of the application (default: pi; "" for none)
  --pip-args ARGS     extra arguments for every pip install (e.g. "--no-index
                      --find-links /media/usb/wheels" for a school without internet)
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

while [ $# -gt 0 ]; do
    case "$1" in
        --root) ROOT="${2:?--root needs a directory}"; shift 2 ;;
        --root=*) ROOT="${1#*=}"; shift ;;
        --source) SOURCE="${2:?--source needs a directory}"; shift 2 ;;
        --source=*) SOURCE="${1#*=}"; shift ;;
        --python) PYTHON="${2:?--python needs a program}"; shift 2 ;;
        --python=*) PYTHON="${1#*=}"; shift ;;
        --extras) EXTRAS="${2?--extras needs a list}"; shift 2 ;;
        --extras=*) EXTRAS="${1#*=}"; shift ;;
        --pip-args) PIP_ARGS="${2?--pip-args needs arguments}"; shift 2 ;;
        --pip-args=*) PIP_ARGS="${1#*=}"; shift ;;
        --no-packages) WITH_PACKAGES=no; shift ;;
        --no-start) WITH_START=no; shift ;;
        --screen-user) SCREEN_USER="${2:?--screen-user needs a user name}"; shift 2 ;;
        --screen-user=*) SCREEN_USER="${1#*=}"; shift ;;
        --no-screen) SCREEN_USER=none; shift ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; die "unknown option: $1" ;;
    esac
done

[ "$(id -u)" -eq 0 ] || die "run me as root: sudo $0"
SOURCE="$(cd "$SOURCE" && pwd)"
if [ ! -f "$SOURCE/pyproject.toml" ] || [ ! -d "$SOURCE/kiosk" ]; then
    die "$SOURCE is not the phone locker's source tree (no pyproject.toml and kiosk/)"
fi
if [ -n "$ROOT" ]; then
    mkdir -p "$ROOT"
    ROOT="$(cd "$ROOT" && pwd)"
    [ "$ROOT" != / ] || ROOT=""
fi
R="$ROOT" # prefix of every path written
cd /      # never write into the directory we were started from

# The running system, with systemd as init: only then are units started and reloaded.
LIVE=no
if [ -z "$R" ] && [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
    LIVE=yes
fi
ROOT_OPTS=()
[ -z "$R" ] || ROOT_OPTS=(--root "$R")

has_group() { grep -q "^$1:" "$R/etc/group"; }
has_user() { grep -q "^$1:" "$R/etc/passwd"; }
# Is user $2 a member of group $1 (as a supplementary group)?
in_group() {
    awk -F: -v group="$1" -v user="$2" '
        $1 == group { n = split($4, members, ","); for (i = 1; i <= n; i++) if (members[i] == user) found = 1 }
        END { exit !found }' "$R/etc/group"
}
uid_of() { awk -F: -v name="$1" '$1 == name { print $3 }' "$R/etc/passwd"; }
gid_of() { awk -F: -v name="$1" '$1 == name { print $3 }' "$R/etc/group"; }

# Create or fix a directory: ensure_dir MODE OWNER GROUP PATH (ids are numeric). A mount
# point (a USB stick for backups) keeps the owner and mode its mount options give it.
ensure_dir() {
    mkdir -p "$4"
    if [ -z "$R" ] && mountpoint -q "$4" 2>/dev/null; then
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
        say "wrote ${target#"$R"}"
    fi
}

locker_cmd() {
    env -u LOCKER_HOME "$R$VENV/bin/locker" --home "$R$STATE" "$@"
}

REBOOT_NEEDED=no

# ------------------------------------------------------------------------------ 1. packages

step "System packages"
if [ "$WITH_PACKAGES" = no ]; then
    say "skipped (--no-packages)"
elif [ -n "$R" ]; then
    say "skipped with --root: install these in the root yourself: $APT_PACKAGES"
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

# ------------------------------------------------------------------------------ 2. user

step "The locker user and its device groups"
for group in $DEVICE_GROUPS; do
    if ! has_group "$group"; then
        groupadd "${ROOT_OPTS[@]}" --system "$group"
        say "created group $group (on a Pi, udev gives it the $group devices)"
    fi
done
if ! has_group "$USER_NAME"; then
    groupadd "${ROOT_OPTS[@]}" --system "$USER_NAME"
fi
if ! has_user "$USER_NAME"; then
    useradd "${ROOT_OPTS[@]}" --system --gid "$USER_NAME" --groups "${DEVICE_GROUPS// /,}" \
        --home-dir "$STATE" --no-create-home --shell /usr/sbin/nologin \
        --comment "Phone locker" "$USER_NAME"
    say "created system user $USER_NAME (groups: $DEVICE_GROUPS)"
else
    missing=""
    for group in $DEVICE_GROUPS; do
        in_group "$group" "$USER_NAME" || missing="${missing:+$missing,}$group"
    done
    if [ -n "$missing" ]; then
        usermod "${ROOT_OPTS[@]}" -a -G "$missing" "$USER_NAME"
        say "added $USER_NAME to $missing"
    else
        say "user $USER_NAME exists, in groups $DEVICE_GROUPS"
    fi
fi
LOCKER_UID="$(uid_of "$USER_NAME")"
LOCKER_GID="$(gid_of "$USER_NAME")"
if [ -z "$LOCKER_UID" ] || [ -z "$LOCKER_GID" ]; then
    die "cannot find the ids of user $USER_NAME"
fi

# ------------------------------------------------------------------------------ 3. SPI, I2C

step "SPI (RC522 reader) and I2C (MCP23017 expanders)"
# raspi-config on the running system (RASPI_CONFIG may name another one, e.g. in tests);
# otherwise config.txt is edited directly.
raspi_config="${RASPI_CONFIG:-}"
if [ -z "$raspi_config" ] && [ -z "$R" ] && command -v raspi-config >/dev/null 2>&1; then
    raspi_config=raspi-config
fi
config_txt=""
for candidate in "$R/boot/firmware/config.txt" "$R/boot/config.txt"; do
    if [ -f "$candidate" ]; then
        config_txt="$candidate"
        break
    fi
done
dtparam_on() { grep -Eq "^[[:space:]]*dtparam=$1=on([[:space:]]|$)" "$config_txt"; }
if [ -n "$config_txt" ] && dtparam_on spi && dtparam_on i2c_arm; then
    say "already on in ${config_txt#"$R"}"
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
    say "added ${lines[*]} to ${config_txt#"$R"}"
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
    modules="$R/etc/modules"
    if ! { [ -f "$modules" ] && grep -Eq '^[[:space:]]*i2c-dev([[:space:]]|$)' "$modules"; }; then
        printf 'i2c-dev\n' >>"$modules"
        say "added i2c-dev to /etc/modules"
        REBOOT_NEEDED=yes
    fi
fi

# ------------------------------------------------------------------------------ 4. app

# Stop what runs from the old version while it is replaced; started again in step 6.
WAS_ACTIVE=""
if [ "$LIVE" = yes ]; then
    for unit in $SERVICES; do
        if systemctl is-active --quiet "$unit"; then
            WAS_ACTIVE="$WAS_ACTIVE $unit"
            say "stopping $unit for the upgrade"
            systemctl stop "$unit"
        fi
    done
fi

step "The application in $VENV"
ensure_dir 0755 0 0 "$R$APP"
ensure_dir 0755 0 0 "$R$LIBEXEC"
# A copy of the source tree: pip builds from it, and it shows what is installed.
rm -rf "$R$APP_SRC.new"
mkdir -p "$R$APP_SRC.new"
parts=()
for part in pyproject.toml README.md LICENSE COPYING hardware kiosk web systemd install docs; do
    [ -e "$SOURCE/$part" ] && parts+=("$part")
done
tar -C "$SOURCE" --exclude=__pycache__ --exclude='*.pyc' --exclude='*.egg-info' \
    --exclude=screenshots -cf - "${parts[@]}" |
    tar -C "$R$APP_SRC.new" --no-same-owner --no-same-permissions -xf -
chmod -R u=rwX,go=rX "$R$APP_SRC.new"
rm -rf "$R$APP_SRC"
mv "$R$APP_SRC.new" "$R$APP_SRC"

if ! "$R$VENV/bin/python" -c 'import sys' >/dev/null 2>&1; then
    rm -rf "$R$VENV"
    "$PYTHON" -m venv "$R$VENV"
    say "created the virtual environment with $("$R$VENV/bin/python" --version)"
fi
pip_install() {
    # shellcheck disable=SC2086  # PIP_ARGS is a list of arguments
    "$R$VENV/bin/python" -m pip install --disable-pip-version-check --no-input \
        --quiet $PIP_ARGS "$@"
}
requirement="$R$APP_SRC"
[ -z "$EXTRAS" ] || requirement="${R}${APP_SRC}[$EXTRAS]"
pip_install "$requirement"
# The version number may not have changed: always put this tree's code in place.
pip_install --no-deps --force-reinstall "$R$APP_SRC"
# Last, and without its dependencies: mfrc522 depends on RPi.GPIO, which would replace
# rpi-lgpio's RPi.GPIO (the one that works on a Pi 5; see README, "Raspberry Pi 5").
pip_install --no-deps "$MFRC522"
if [[ ",$EXTRAS," == *,pi,* ]] && "$R$VENV/bin/python" -m pip show --quiet RPi.GPIO >/dev/null 2>&1; then
    warn "the old RPi.GPIO package is installed: replacing it with rpi-lgpio"
    "$R$VENV/bin/python" -m pip uninstall --yes --quiet RPi.GPIO
    pip_install --no-deps --force-reinstall rpi-lgpio
fi
rm -rf "$R$APP_SRC/build" "$R$APP_SRC"/*.egg-info
say "installed $("$R$VENV/bin/locker" --version)"

install -D -m 0755 "$SOURCE/install/locker-wrapper.sh" "$R$WRAPPER"
install -m 0755 "$SOURCE/install/locker-backup.sh" "$R$LIBEXEC/locker-backup"
install -m 0755 "$SOURCE/install/locker-screen.sh" "$R$LIBEXEC/locker-screen"
say "the locker command: $WRAPPER"

# ------------------------------------------------------------------------------ 5. config, state

step "Configuration in $ETC, state in $STATE"
ensure_dir 0750 0 "$LOCKER_GID" "$R$ETC"
ensure_dir 0750 "$LOCKER_UID" "$LOCKER_GID" "$R$STATE"
ensure_dir 0750 "$LOCKER_UID" "$LOCKER_GID" "$R$BACKUPS"

config="$R$ETC/config.toml"
link="$R$STATE/config.toml"
link_target=../../../etc/locker/config.toml # relative, so that --root works too
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

if [ ! -e "$R$ETC/backup.env" ]; then
    install_file 0644 "$R$ETC/backup.env" <"$SOURCE/install/backup.env"
fi

# `locker init` creates the site secret (0600) and the database, or upgrades the schema.
# It runs as root; whatever it creates is then handed to the locker user.
(umask 027 && locker_cmd init)
find "$R$STATE" -xdev ! -type l \( ! -uid "$LOCKER_UID" -o ! -gid "$LOCKER_GID" \) \
    -exec chown "$LOCKER_UID:$LOCKER_GID" {} +

# The kiosk screen's address, from [kiosk] name and [web] port (kept once written).
read -r KIOSK_NAME WEB_PORT < <(
    env -u LOCKER_HOME "$R$VENV/bin/python" -c '
import sys
from pathlib import Path
from kiosk.config import load
config = load(Path(sys.argv[1]))
print(config.kiosk.name, config.web.port)' "$R$STATE" 2>/dev/null || echo "main 8000"
)
if [ ! -e "$R$ETC/screen.env" ]; then
    install_file 0644 "$R$ETC/screen.env" <<EOF
# The kiosk screen (locker-screen@USER.service, /opt/locker/libexec/locker-screen).
# Written once by the install script from [kiosk] name and [web] port; edit it if they change.
LOCKER_SCREEN_URL=http://127.0.0.1:$WEB_PORT/kiosk/$KIOSK_NAME
# WAYLAND_DISPLAY=wayland-0   # or DISPLAY=:0, to skip the search for the display
EOF
fi

CONFIG_OK=no
if check="$(locker_cmd config check 2>&1)"; then
    CONFIG_OK=yes
    say "$check"
else
    say "the kiosk is not configured yet: $check"
fi

# ------------------------------------------------------------------------------ 6. systemd

step "systemd units"
mkdir -p "$R$UNITDIR"
units=()
for unit in "$SOURCE"/systemd/*.service "$SOURCE"/systemd/*.timer; do
    name="${unit##*/}"
    units+=("$name")
    install_file 0644 "$R$UNITDIR/$name" <"$unit"
done

if [ "$SCREEN_USER" = auto ]; then
    SCREEN_USER=none
    autologin=""
    if [ -f "$R/etc/lightdm/lightdm.conf" ]; then
        autologin="$(sed -nE 's/^[[:space:]]*autologin-user[[:space:]]*=[[:space:]]*([^[:space:]]+).*/\1/p' \
            "$R/etc/lightdm/lightdm.conf" | tail -n 1)"
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
    systemctl --root="${R:-/}" enable --quiet "${enable[@]}"
    say "enabled (offline, systemctl --root): ${enable[*]}"
else
    say "no systemctl: enable these yourself: ${enable[*]}"
fi

if [ "$LIVE" = yes ] && [ "$WITH_START" = yes ]; then
    # shellcheck disable=SC2086  # a list of unit names
    systemctl start $TIMERS
    systemctl restart locker-web.service
    if [ "$CONFIG_OK" = yes ]; then
        systemctl restart locker-kiosk.service
        say "started locker-web and locker-kiosk"
    else
        say "started locker-web; locker-kiosk starts once /etc/locker/config.toml describes"
        say "  the cabinet ([kiosk] and [hardware]: docs/hardware.md):"
        say "  sudo locker config check && sudo systemctl start locker-kiosk"
    fi
    if [ "$SCREEN_USER" != none ]; then
        systemctl restart "locker-screen@$SCREEN_USER.service"
        if [ -n "$raspi_config" ]; then
            "$raspi_config" nonint do_blanking 1 || true # keep the kiosk screen on
        fi
    fi
else
    [ -z "$WAS_ACTIVE" ] || say "not restarted (--no-start):$WAS_ACTIVE"
    say "services not started here (no running systemd, --root or --no-start)"
fi

# ------------------------------------------------------------------------------ done

step "Done"
say "configuration: $ETC/config.toml   state: $STATE   backups: $BACKUPS"
say "logs: journalctl -u locker-kiosk -u locker-web"
if [ "$REBOOT_NEEDED" = yes ]; then
    say "SPI/I2C were switched on: reboot once (sudo reboot) before the kiosk can use them"
fi
say "next: describe the cabinet in $ETC/config.toml, then: sudo locker selftest"
say "      (docs/hardware.md), and go live: docs/operations.md, Going live"
