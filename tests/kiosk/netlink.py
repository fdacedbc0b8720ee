"""The network between a kiosk and the school's database, for tests: a TCP proxy in front of
the PostgreSQL server that can be cut (every connection through it is closed, new ones are
closed as soon as they arrive) and restored. Nothing inside the product is mocked: psycopg
sees a real socket go dead, as it would when a switch or the server's machine goes down.

``lose_next_commit_reply()`` makes the nastiest cut: the next COMMIT reaches the server, which
commits, and the link goes down before the server's reply gets back (a commit in doubt)."""

from __future__ import annotations

import socket
import threading
from contextlib import suppress

from sqlalchemy.engine import make_url


class NetworkLink:
    """``url(database_url)`` gives the URL through the link; ``cut()`` and ``restore()``."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self._target = (target_host, target_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._up = True
        self._closed = False
        self._lose_commit = False
        self.connections = 0
        self.commits_lost = 0
        threading.Thread(target=self._accept, name="netlink-accept", daemon=True).start()

    @classmethod
    def to(cls, database_url: str) -> NetworkLink:
        parsed = make_url(database_url)
        return cls(parsed.host or "127.0.0.1", int(parsed.port or 5432))

    def url(self, database_url: str) -> str:
        """``database_url`` with its host and port replaced by this link's."""
        return (
            make_url(database_url)
            .set(host="127.0.0.1", port=self.port)
            .render_as_string(hide_password=False)
        )

    @property
    def up(self) -> bool:
        return self._up

    def cut(self) -> None:
        """Close every connection through the link and refuse new ones until restored."""
        with self._lock:
            self._up = False
            sockets, self._sockets = self._sockets, set()
        for sock in sockets:
            _close(sock)

    def restore(self) -> None:
        with self._lock:
            self._up = True

    def lose_next_commit_reply(self) -> None:
        """The next COMMIT any client sends through the link reaches the server, but its
        reply does not come back: the link is cut instead (until restored)."""
        with self._lock:
            self._lose_commit = True

    def close(self) -> None:
        self._closed = True
        self.cut()
        _close(self._listener)

    # ------------------------------------------------------------------ plumbing

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                up = self._up
            if not up:
                _close(client)
                continue
            try:
                server = socket.create_connection(self._target, timeout=5)
            except OSError:
                _close(client)
                continue
            server.settimeout(None)
            with self._lock:
                if not self._up:
                    _close(client)
                    _close(server)
                    continue
                self._sockets.update((client, server))
                self.connections += 1
            pair = _Pair()
            for source, sink, upstream in ((client, server, True), (server, client, False)):
                threading.Thread(
                    target=self._pump,
                    args=(source, sink, pair, upstream),
                    name="netlink-pump",
                    daemon=True,
                ).start()

    def _pump(
        self, source: socket.socket, sink: socket.socket, pair: _Pair, upstream: bool
    ) -> None:
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                if upstream and _COMMIT in data:
                    with self._lock:
                        if self._lose_commit:
                            self._lose_commit = False
                            pair.lose_reply = True
                elif not upstream and pair.lose_reply:
                    # The server has committed; its answer is lost with the network.
                    pair.lose_reply = False
                    with self._lock:
                        self.commits_lost += 1
                    self.cut()
                    break
                sink.sendall(data)
        except OSError:
            pass
        finally:
            with self._lock:
                self._sockets.discard(source)
                self._sockets.discard(sink)
            _close(source)
            _close(sink)


# A simple-query message of the PostgreSQL protocol asking to commit, as libpq sends it.
_COMMIT = b"COMMIT\x00"


class _Pair:
    """One connection through the link (both directions)."""

    def __init__(self) -> None:
        self.lose_reply = False


def _close(sock: socket.socket) -> None:
    with suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with suppress(OSError):
        sock.close()
