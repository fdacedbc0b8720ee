#!/bin/bash
# Remove the phone locker from this Raspberry Pi, KEEPING ITS DATA.
#
#     sudo /opt/locker/src/install/uninstall-pi.sh
#
# Removes: the systemd units and timers (stopped and disabled first), the application in
# /opt/locker (every release: virtual environment and source copy), /usr/local/bin/locker,
# and the `locker` and `locker-web` users and the `locker` group. Keeps: /var/lib/locker (the database and the site secret), /etc/locker
# (the configuration) and /var/backups/locker; they are handed to root so that no later
# user that happens to get the old user id can read them. Installing again
# (install/install-pi.sh) picks them up as they are. SPI, I2C and the system packages are
# left as they are.
#
# --root DIR works as for install-pi.sh (tests).
set -euo pipefail

APP=/opt/locker
ETC=/etc/locker
STATE=/var/lib/locker
BACKUPS=/var/backups/locker
UNITDIR=/etc/systemd/system
WRAPPER=/usr/local/bin/locker
USER_NAME=locker
WEB_USER=locker-web
DATA_GROUP=locker
UNITS="locker-kiosk.service locker-web.service locker-backup.service locker-backup.timer
locker-retention.service locker-retention.timer locker-sweep.service locker-sweep.timer
locker-screen@.service"

ROOT=""
usage() {
    cat <<EOF
Usage: sudo $0 [--root DIR]

Remove the phone locker's services, application and users; keep its data
($STATE, $ETC, $BACKUPS).
EOF
}
say() { printf 'locker-uninstall: %s\n' "$*"; }
die() {
    printf 'locker-uninstall: error: %s\n' "$*" >&2
    exit 1
}

while [ $# -gt 0 ]; do
    case "$1" in
        --root) ROOT="${2:?--root needs a directory}"; shift 2 ;;
        --root=*) ROOT="${1#*=}"; shift ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; die "unknown option: $1" ;;
    esac
done
[ "$(id -u)" -eq 0 ] || die "run me as root: sudo $0"
if [ -n "$ROOT" ]; then
    [ -d "$ROOT" ] || die "--root $ROOT: no such directory"
    ROOT="$(cd "$ROOT" && pwd)"
    [ "$ROOT" != / ] || ROOT=""
fi
R="$ROOT"
cd /

LIVE=no
if [ -z "$R" ] && [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
    LIVE=yes
fi

# ------------------------------------------------------------------------------ units

# Every enabled instance of ours (locker-screen@USER.service included), then the rest.
enabled=()
for link in "$R$UNITDIR"/*.wants/locker-*; do
    [ -L "$link" ] && enabled+=("${link##*/}")
done
if [ "$LIVE" = yes ]; then
    for unit in "${enabled[@]}"; do
        systemctl disable --now --quiet "$unit" || true
        say "stopped and disabled $unit"
    done
    for unit in locker-kiosk.service locker-web.service; do
        systemctl stop "$unit" 2>/dev/null || true # also when not enabled
    done
fi
for link in "$R$UNITDIR"/*.wants/locker-*; do
    if [ -L "$link" ]; then
        rm -f "$link"
        say "removed ${link#"$R"}"
    fi
done
for unit in $UNITS; do
    if [ -e "$R$UNITDIR/$unit" ]; then
        rm -f "$R$UNITDIR/$unit"
        say "removed $UNITDIR/$unit"
    fi
done
for dir in "$R$UNITDIR"/*.wants; do
    [ -d "$dir" ] && rmdir --ignore-fail-on-non-empty "$dir"
done
if [ "$LIVE" = yes ]; then
    systemctl daemon-reload
    systemctl reset-failed 'locker-*' 2>/dev/null || true
fi

# ------------------------------------------------------------------------------ program

if [ -f "$R$WRAPPER" ] && grep -q 'install/install-pi.sh' "$R$WRAPPER"; then
    rm -f "$R$WRAPPER"
    say "removed $WRAPPER"
fi
if [ -d "$R$APP" ]; then
    rm -rf "$R$APP"
    say "removed $APP (the application: its releases and virtual environments)"
fi

# ------------------------------------------------------------------------------ user

# The data outlives the users: hand it to root first, so that no user or group created
# later with the same id could read it. A new install gives it back to the new locker user.
for dir in "$R$STATE" "$R$ETC" "$R$BACKUPS"; do
    if [ -d "$dir" ]; then
        if [ -z "$R" ] && mountpoint -q "$dir" 2>/dev/null; then
            continue # a USB stick or share: its owner comes from the mount options
        fi
        chown -R -h 0:0 "$dir"
    fi
done
ROOT_OPTS=()
[ -z "$R" ] || ROOT_OPTS=(--root "$R")
for user in "$WEB_USER" "$USER_NAME"; do
    if grep -q "^$user:" "$R/etc/passwd"; then
        userdel "${ROOT_OPTS[@]}" "$user"
        say "removed user $user"
    fi
done
if grep -q "^$DATA_GROUP:" "$R/etc/group"; then
    groupdel "${ROOT_OPTS[@]}" "$DATA_GROUP"
    say "removed group $DATA_GROUP"
fi

# ------------------------------------------------------------------------------ kept

say "KEPT (your data, owned by root now):"
for dir in "$STATE" "$ETC" "$BACKUPS"; do
    [ -e "$R$dir" ] && say "  $dir"
done
say "  $STATE holds the database and secret.key: without the secret no card and no audit"
say "  event can be checked. Reinstall with install/install-pi.sh to use them again, or,"
say "  after copying them somewhere safe, delete them for good with:"
say "  sudo rm -rf $STATE $ETC $BACKUPS"
