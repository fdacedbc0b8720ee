#!/bin/sh
# /opt/locker/libexec/locker-screen: show the kiosk screen in Chromium's kiosk mode on the
# Pi's own display. Run by locker-screen@USER.service as the desktop user USER.
#
# Settings (environment; /etc/locker/screen.env is read by the service):
#   LOCKER_SCREEN_URL     the page (default http://127.0.0.1:8000/kiosk/, which the web app
#                         sends on to this cabinet's /kiosk/NAME, [kiosk] name)
#   LOCKER_SCREEN_WAIT_S  how long to wait for the display and the web app (default 300)
#   WAYLAND_DISPLAY or DISPLAY   skip the search for the display
#   LOCKER_SCREEN_BROWSER the browser (default: chromium, else chromium-browser)
#
# How the display is found: Raspberry Pi OS bookworm's desktop runs a Wayland compositor
# (labwc, or wayfire on older images) for the auto-login user, whose socket is
# /run/user/UID/wayland-N; the script waits for it. On an X11 desktop it uses the X server
# on :0 (socket /tmp/.X11-unix/X0) with the user's ~/.Xauthority.
set -eu

url="${LOCKER_SCREEN_URL:-http://127.0.0.1:8000/kiosk/}"
wait_s="${LOCKER_SCREEN_WAIT_S:-300}"
XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/run/user/$(id -u)}"
export XDG_RUNTIME_DIR

say() {
    echo "locker-screen: $*" >&2
}

find_display() {
    if [ -n "${WAYLAND_DISPLAY:-}" ] || [ -n "${DISPLAY:-}" ]; then
        return 0
    fi
    for socket in "$XDG_RUNTIME_DIR"/wayland-*; do
        case "$socket" in *.lock) continue ;; esac
        if [ -S "$socket" ]; then
            WAYLAND_DISPLAY="${socket##*/}"
            export WAYLAND_DISPLAY
            return 0
        fi
    done
    if [ -S /tmp/.X11-unix/X0 ]; then
        DISPLAY=:0
        export DISPLAY
        if [ -z "${XAUTHORITY:-}" ] && [ -f "$HOME/.Xauthority" ]; then
            XAUTHORITY="$HOME/.Xauthority"
            export XAUTHORITY
        fi
        return 0
    fi
    return 1
}

# The health check of the web app: the URL's scheme, host and port, path /healthz.
health_url="$(printf '%s\n' "$url" | sed -E 's#^([a-z]+://[^/]+).*#\1/healthz#')"

web_answers() {
    if command -v curl >/dev/null 2>&1; then
        curl --silent --fail --max-time 3 --output /dev/null "$health_url"
    else
        /opt/locker/venv/bin/python -c \
            'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=3)' \
            "$health_url" >/dev/null 2>&1
    fi
}

waited=0
until find_display && web_answers; do
    if [ "$waited" -ge "$wait_s" ]; then
        find_display || say "no display after ${wait_s}s: no Wayland socket in $XDG_RUNTIME_DIR and no X server on :0 (is the desktop logged in automatically?)"
        web_answers || say "no answer from $health_url after ${wait_s}s (systemctl status locker-web)"
        exit 1
    fi
    sleep 2
    waited=$((waited + 2))
done

if [ -S "$XDG_RUNTIME_DIR/bus" ] && [ -z "${DBUS_SESSION_BUS_ADDRESS:-}" ]; then
    DBUS_SESSION_BUS_ADDRESS="unix:path=$XDG_RUNTIME_DIR/bus"
    export DBUS_SESSION_BUS_ADDRESS
fi

browser="${LOCKER_SCREEN_BROWSER:-}"
if [ -z "$browser" ]; then
    for candidate in chromium chromium-browser; do
        if command -v "$candidate" >/dev/null 2>&1; then
            browser="$candidate"
            break
        fi
    done
fi
[ -n "$browser" ] || { say "Chromium is not installed: sudo apt install chromium"; exit 1; }

if [ -n "${WAYLAND_DISPLAY:-}" ]; then
    platform=wayland
    say "showing $url on Wayland display $WAYLAND_DISPLAY"
else
    platform=x11
    say "showing $url on X display $DISPLAY"
fi

# A fresh profile each start: no "restore pages?" bubble after a power cut, nothing kept.
profile="$XDG_RUNTIME_DIR/locker-screen"
rm -rf "$profile"
mkdir -p "$profile"

exec "$browser" \
    --kiosk \
    --ozone-platform="$platform" \
    --user-data-dir="$profile" \
    --no-first-run \
    --noerrdialogs \
    --disable-infobars \
    --disable-session-crashed-bubble \
    --disable-features=Translate \
    --disable-pinch \
    --overscroll-history-navigation=0 \
    --password-store=basic \
    --check-for-update-interval=31536000 \
    "$url"
