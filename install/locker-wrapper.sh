#!/bin/sh
# /usr/local/bin/locker: the `locker` command of the installed phone locker.
# Installed by install/install-pi.sh (locker-install-wrapper); removed by uninstall-pi.sh.
#
# It works on the instance directory /var/lib/locker unless --home or LOCKER_HOME says
# otherwise. Run it with sudo: the state directory belongs to the `locker` user. Run as
# root, anything the command created in the state directory (a new database, the site
# secret on `locker init`) is handed back to the `locker` user and group afterwards, and
# the database and the secret get the modes the two services need (the web app, user
# locker-web, reads the secret and writes the database through group locker). Files you
# name (a roster CSV, a backup destination) are opened as root, so they may be anywhere.
set -eu

LOCKER_HOME="${LOCKER_HOME:-/var/lib/locker}"
export LOCKER_HOME
program=/opt/locker/venv/bin/locker

if [ "$(id -u)" -ne 0 ]; then
    exec "$program" "$@"
fi

status=0
"$program" "$@" || status=$?
if [ -d "$LOCKER_HOME" ] && id locker >/dev/null 2>&1; then
    find "$LOCKER_HOME" -xdev ! -type l \( ! -user locker -o ! -group locker \) \
        -exec chown locker:locker {} + || true
    if id locker-web >/dev/null 2>&1; then
        [ ! -f "$LOCKER_HOME/secret.key" ] || chmod 0640 "$LOCKER_HOME/secret.key" || true
        for file in "$LOCKER_HOME/locker.db" "$LOCKER_HOME/locker.db-wal" "$LOCKER_HOME/locker.db-shm"; do
            [ ! -f "$file" ] || chmod 0660 "$file" || true
        done
    fi
fi
exit "$status"
