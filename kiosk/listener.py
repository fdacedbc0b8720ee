"""Commands reach a kiosk at once on PostgreSQL: LISTEN for the web's notifications.

``kiosk.commands.submit`` sends ``NOTIFY locker_commands, '<kiosk id>'`` in the web's
transaction; PostgreSQL delivers it at commit. This thread holds one connection listening on
that channel and wakes the kiosk's loop when its own id arrives. If the connection fails it
is opened again a little later; meanwhile the loop's regular poll of the commands table
still finds every command, only more slowly.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from sqlalchemy.engine import make_url

from kiosk.db import COMMAND_CHANNEL, pg_timeouts

log = logging.getLogger(__name__)

RETRY_S = 2.0


class CommandListener:
    def __init__(self, url: str, kiosk_id: int, wake: Callable[[], None]) -> None:
        parsed = make_url(url)
        self._conninfo = parsed.set(drivername="postgresql").render_as_string(hide_password=False)
        self._timeouts = pg_timeouts(parsed)
        self._kiosk = str(kiosk_id)
        self._wake = wake
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.listening = threading.Event()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="command-listener", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=3)

    def _run(self) -> None:
        import psycopg

        failing = False
        while not self._stop.is_set():
            try:
                with psycopg.connect(self._conninfo, autocommit=True, **self._timeouts) as conn:
                    conn.execute(f"LISTEN {COMMAND_CHANNEL}")
                    self.listening.set()
                    if failing:
                        log.info("command notifications are back")
                        failing = False
                    self._wake()  # anything submitted before we listened
                    while not self._stop.is_set():
                        for notice in conn.notifies(timeout=0.5, stop_after=1):
                            if notice.payload == self._kiosk:
                                self._wake()
            except psycopg.Error as exc:
                self.listening.clear()
                # Said once per outage: the kiosk's own log says when it works offline.
                (log.debug if failing else log.warning)(
                    "command notifications unavailable (%s); polling meanwhile",
                    str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__,
                )
                failing = True
                self._stop.wait(RETRY_S)
