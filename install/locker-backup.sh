#!/bin/sh
# /opt/locker/libexec/locker-backup: one backup run, then keep only the newest backups.
# Run by locker-backup.service (as the locker user) every night; see docs/operations.md.
#
# Settings (environment; /etc/locker/backup.env is read by the service):
#   LOCKER_BACKUP_DIR            where to write (default /var/backups/locker)
#   LOCKER_BACKUP_KEEP           how many backups to keep (default 14)
#   LOCKER_BACKUP_REQUIRE_MOUNT  "yes": fail unless LOCKER_BACKUP_DIR is a mount point, so
#                                that a USB stick or share that is missing is noticed
#                                instead of the backup silently filling the SD card
#   LOCKER_BIN                   the locker program (default /opt/locker/venv/bin/locker)
#
# Each backup is locker-YYYYMMDD-HHMMSS.db with .secret.key and .config.toml beside it
# (`locker backup DIR --include-secret`): the secret is needed to restore (docs/operations.md).
set -eu

dir="${LOCKER_BACKUP_DIR:-/var/backups/locker}"
keep="${LOCKER_BACKUP_KEEP:-14}"
require_mount="${LOCKER_BACKUP_REQUIRE_MOUNT:-no}"
locker="${LOCKER_BIN:-/opt/locker/venv/bin/locker}"

fail() {
    echo "locker-backup: $*" >&2
    exit 1
}

case "$keep" in
    '' | *[!0-9]*) fail "LOCKER_BACKUP_KEEP=$keep is not a whole number" ;;
esac
[ "$keep" -ge 1 ] || fail "LOCKER_BACKUP_KEEP must be at least 1"
[ -d "$dir" ] || fail "$dir does not exist (is the USB stick or network share mounted?)"
if [ "$require_mount" = yes ] && ! mountpoint -q "$dir"; then
    fail "$dir is not a mount point (LOCKER_BACKUP_REQUIRE_MOUNT=yes): is the stick plugged in?"
fi
[ -w "$dir" ] || fail "$dir is not writable by $(id -un) (see docs/operations.md, Backups)"

"$locker" backup "$dir" --include-secret

# Names sort by date (oldest first in the C locale): drop all but the newest $keep, with the
# files beside each.
LC_ALL=C
export LC_ALL
pattern='locker-[0-9][0-9][0-9][0-9][0-9][0-9][0-9][0-9]-[0-9][0-9][0-9][0-9][0-9][0-9].db'
count=0
for path in "$dir"/$pattern; do
    [ -e "$path" ] && count=$((count + 1))
done
excess=$((count - keep))
for path in "$dir"/$pattern; do
    [ "$excess" -gt 0 ] || break
    [ -e "$path" ] || continue
    stem="${path%.db}"
    rm -f -- "$stem.db" "$stem.secret.key" "$stem.config.toml"
    echo "removed old backup $path"
    excess=$((excess - 1))
done
